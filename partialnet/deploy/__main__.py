"""Export a trained checkpoint as a fused ONNX model, checked with onnxruntime.

  python -m partialnet.deploy ckpt=outputs/train/runs/<run>/checkpoints/last.ckpt onnx=model.onnx
  options: weights=auto|ema|raw  input_size=N (default: the checkpoint's)  opset=N  fuse=true|false
           export_form=full_width|split (the graph OpenVINO runs fastest, the default, or onnxruntime)
           tolerance=1e-3 (max |onnxruntime - PyTorch| allowed on a random batch)

Prints the file, the input size and the measured difference; exit 2 with one line on bad input
or when onnxruntime disagrees with PyTorch beyond the tolerance.
"""
from __future__ import annotations

import sys

_KEYS = {"ckpt", "onnx", "weights", "input_size", "opset", "fuse", "export_form", "tolerance"}
_USAGE = ("usage: python -m partialnet.deploy ckpt=PATH onnx=OUT.onnx [weights=auto|ema|raw] [input_size=N] [opset=N] "
          "[fuse=true|false] [export_form=full_width|split] [tolerance=X]")


def _parse(argv: list[str]) -> dict:
    from partialnet.errors import UserError

    args = {}
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in _KEYS:
            raise UserError(f"unknown argument {a!r}; known: {', '.join(sorted(_KEYS))} ({_USAGE})")
        args[key] = value
    for need in ("ckpt", "onnx"):
        if not args.get(need):
            raise UserError(f"{need}= is required ({_USAGE})")
    for key, conv in (("input_size", int), ("opset", int), ("tolerance", float)):
        if key in args:
            try:
                args[key] = conv(args[key])
            except ValueError:
                raise UserError(f"{key}={args[key]!r} is not a number") from None
    if "export_form" in args:  # checked before anything is loaded
        from partialnet.deploy.fusion import check_export_form

        check_export_form(args["export_form"])
    if "fuse" in args:
        if args["fuse"].lower() not in ("true", "false"):
            raise UserError(f"fuse={args['fuse']!r}; use true or false")
        args["fuse"] = args["fuse"].lower() == "true"
    return args


def main(argv: list[str]) -> None:
    import torch

    from partialnet.deploy.onnx_export import DEFAULT_OPSET, export_onnx, onnx_max_abs_diff
    from partialnet.errors import UserError
    from partialnet.training.checkpoint_file import load_checkpoint_file
    from partialnet.training.checkpoint_model import model_from_checkpoint

    args = _parse(argv)
    ckpt = load_checkpoint_file(args["ckpt"])
    model, meta, used = model_from_checkpoint(ckpt, args["ckpt"], args.get("weights", "auto"))
    size = int(args.get("input_size") or meta.get("image_size", 224))
    path = export_onnx(model, args["onnx"], input_size=size, opset=int(args.get("opset", DEFAULT_OPSET)),
                       fuse=bool(args.get("fuse", True)), export_form=args.get("export_form", "full_width"))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    diff = onnx_max_abs_diff(path, model, x)
    tol = float(args.get("tolerance", 1e-3))
    if not diff <= tol:
        raise UserError(f"onnxruntime differs from PyTorch by {diff:.3g} (> tolerance={tol:g}) for {path}")
    form = "fused" if args.get("fuse", True) else "unfused"
    print(f"wrote {path} ({form}, {used} weights of {meta['model_spec']['name']}, input {size}x{size}); "
          f"onnxruntime max |diff| vs PyTorch: {diff:.2e}", flush=True)


if __name__ == "__main__":
    from partialnet.utils.cli import run_cli

    run_cli(lambda: main(sys.argv[1:]))
