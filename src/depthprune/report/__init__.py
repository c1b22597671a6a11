"""Reports: JSON, Markdown tables and plots."""
