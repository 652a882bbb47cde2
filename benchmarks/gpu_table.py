"""The one table of benchmarks/gpu_check.sh: python benchmarks/gpu_table.py OUT (the folder the script filled).

MFU is the step's FLOPs per second (XLA's cost analysis) over a peak: the float32 jnp.dot peak measured in the
same run, and for known cards the vendor's dense peak of the row's dtype (bfloat16: tensor cores; float32:
TF32 tensor cores, which XLA uses for float32 matmuls on these cards by default).
"""

import json
import pathlib
import sys

NOMINAL_TFLOPS = {"H100": {"bfloat16": 989.0, "float32": 494.7}, "H200": {"bfloat16": 989.0, "float32": 494.7},
                  "A100": {"bfloat16": 312.0, "float32": 156.0}}  # dense, SXM


def _json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _stage(out: pathlib.Path, name: str) -> str:
  """'ok, 42 s' / 'failed (rc 1, 3 s): <last log line>' / 'timed out' / 'not run'."""
  try:
    rc, secs = (out / f"{name}.rc").read_text().split()
  except (OSError, ValueError):
    return "not run"
  if rc == "0":
    return f"ok, {secs} s"
  if rc == "124":
    return f"timed out after {secs} s"
  log = (out / f"{name}.log").read_text(errors="replace").strip().splitlines() if (out / f"{name}.log").exists() else []
  return f"failed (rc {rc}, {secs} s): {log[-1][:120] if log else ''}"


def nominal(kind: str, dtype: str):
  for card, peaks in NOMINAL_TFLOPS.items():
    if card in kind:
      return peaks.get(dtype)
  return None


def table(out) -> str:
  out = pathlib.Path(out)
  device = _json(out / "device.json") or {}
  kind = str(device.get("kind", "unknown device"))
  lines = [f"## gpu_check on {kind} ({device.get('platform', '?')}, jax {device.get('jax', '?')})", "",
           "| stage | setting | step ms | samples/s | GFLOP/s | MFU (measured f32 dot peak) | MFU (nominal) | note |",
           "|---|---|---:|---:|---:|---:|---:|---|"]
  for r in _json(out / "mlp.json") or []:
    torch = r.get("torch_samples_per_s")
    note = f"PyTorch {torch:,.0f} samples/s, roofline ratio {r.get('roofline_ratio', float('nan')):.2f}" if torch \
        else "PyTorch not measured"
    peak = r.get("peak_gflop_per_s") or float("nan")
    lines.append(f"| MLP step (msvae_public) | batch {r['batch']} | {1000 * r['batch'] / r['mmvae_samples_per_s']:.2f} "
                 f"| {r['mmvae_samples_per_s']:,.0f} | {r['mmvae_gflop_per_s']:.0f} | "
                 f"{r['mmvae_gflop_per_s'] / peak:.1%} | | {note} |")
  if not _json(out / "mlp.json"):
    lines.append(f"| MLP step (msvae_public) | | | | | | | {_stage(out, 'mlp')} |")
  for dtype in ("float32", "bfloat16"):
    rows = _json(out / f"conv_{dtype}.json") or []
    for r in rows:
      peak = r.get("peak_gflop_per_s") or float("nan")
      nom = nominal(kind, dtype)
      mfu_nom = f"{r['gflop_per_s'] / (1000 * nom):.1%}" if nom else ""
      lines.append(f"| conv step | {dtype}, batch {r['batch']} | {r['step_ms']:.1f} | {r['samples_per_s']:,.0f} | "
                   f"{r['gflop_per_s']:.0f} | {r['gflop_per_s'] / peak:.1%} | {mfu_nom} | |")
    if not rows:
      lines.append(f"| conv step | {dtype} | | | | | | {_stage(out, 'conv_' + dtype)} |")
  demo = _json(out / "demo" / "summary.json")
  if demo:
    mrr = ", ".join(f"{k.split('.')[1].replace('_to_', '->')} {v:.3f}" for k, v in demo.items()
                    if k.startswith("retrieval.") and k.endswith(".mrr"))
    lines.append(f"| mmvae demo | default | | | | | | {demo['seconds']:.0f} s end to end; MRR {mrr} |")
  else:
    lines.append(f"| mmvae demo | | | | | | | {_stage(out, 'demo')} |")
  return "\n".join(lines)


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python benchmarks/gpu_table.py OUT")
  print(table(sys.argv[1]))
