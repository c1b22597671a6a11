"""``depthprune prune --compensate linear``: the options, and the steps the prune command calls around pruning."""

from __future__ import annotations

from depthprune.errors import DepthpruneError


def add_compensate_args(p) -> None:
    from depthprune.pruning.compensate import DEFAULT_RIDGE

    g = p.add_argument_group("compensation (training-free, fused into the kept block before each cut)")
    g.add_argument("--compensate", choices=["none", "linear"], default="none",
                   help="linear: fit a map on calibration activations so the block before each removed span "
                        "reproduces the residual stream after it, and fuse it into that block's weights "
                        "(full matrix into down_proj for LLaMA-like models, per-channel scale into Gemma's "
                        "post_feedforward_layernorm); the checkpoint stays a stock one (default none)")
    g.add_argument("--compensate-ridge", type=float, default=DEFAULT_RIDGE,
                   help="ridge towards the identity, relative to the mean diagonal of M^T M (default %(default)s)")
    g.add_argument("--compensate-samples", type=int, default=None,
                   help="calibration samples for the fit, drawn like --calib/--calib-seq-len/--seed "
                        "(default: --calib-samples)")


class Compensation:
    """What the prune command does for ``--compensate linear``: checks, a snapshot before pruning, the fit after."""

    def __init__(self, args):
        self.args = args
        self.run = None
        if args.compensate_ridge != args.compensate_ridge or args.compensate_ridge < 0:
            raise DepthpruneError(f"--compensate-ridge must be >= 0, got {args.compensate_ridge}")
        if args.compensate_samples is not None and args.compensate_samples < 1:
            raise DepthpruneError(f"--compensate-samples must be a positive integer, got {args.compensate_samples}")
        if getattr(args, "method", "depth") != "depth":
            raise DepthpruneError("--compensate linear applies to depth pruning (whole blocks), not --method width")
        if args.unit != "block":
            raise DepthpruneError("--compensate linear fits a map for removed whole blocks; it cannot be combined "
                                  "with --unit module")

    @classmethod
    def from_args(cls, args) -> Compensation | None:
        return cls(args) if getattr(args, "compensate", "none") == "linear" else None

    def check_scores(self, scores) -> None:
        if scores.unit != "block":
            raise DepthpruneError(f"--compensate linear needs block scores; --scores holds {scores.unit} scores")

    def before_pruning(self, lm) -> None:
        """Refuse an unsupported family, draw the calibration set and remember the blocks (model still whole)."""
        from depthprune.data import CalibrationSpec
        from depthprune.pruning.compensate import CompensationRun

        a = self.args
        spec = CalibrationSpec(a.calib, a.compensate_samples or a.calib_samples, a.calib_seq_len, a.seed,
                               a.text_field)
        self.run = CompensationRun(lm, spec, a.compensate_ridge, a.score_batch_size, a.unit)

    def after_pruning(self, lm, removed: list[int]) -> dict:
        info = self.run.apply(lm.model, removed)
        for span in info["spans"]:
            print(f"Compensated blocks {span['removed']} in block {span['fused_into']} ({info['mode']} map into "
                  f"{info['writer']}): residual MSE {span['mse_before']:.4g} -> {span['mse_after']:.4g} on "
                  f"{span['tokens']:,} calibration tokens", flush=True)
        for skip in info["skipped"]:
            print(f"Not compensated: blocks {skip['removed']} ({skip['reason']})", flush=True)
        return info
