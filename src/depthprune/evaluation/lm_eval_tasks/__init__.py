"""lm-eval task definitions for the local copies of the paper's 7 commonsense tasks.

Point lm-eval at this directory (``TaskManager(include_path=TASKS_DIR)`` or ``lm_eval --include_path``) to get
``depthprune_boolq``, ``depthprune_piqa``, ... (tag ``depthprune_commonsense``). Prompts, choices, targets and
metrics are copied from lm-eval's own task YAMLs; only the data loading differs (see ``local_data.py``).
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
