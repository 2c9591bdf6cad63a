"""Parameter counts of every preset, and of `base` per component next to the official
ReMamber_Conv base (read off the official model instantiated on a CPU; shared/DESIGN.md §7),
without the presence head the official model lacks. Writes benchmarks/results/param_count.json.

    python benchmarks/param_count.py
"""

from __future__ import annotations

from pathlib import Path

from remamber.modeling.presets import PRESETS, build_model, preset_config
from remamber.utils.io import write_json

OFFICIAL_BASE_M = dict(
    total=254.6, text=123.1, visual=131.5, backbone=87.5, twister=29.1, global_text=1.5, local_text=3.9, decoder=9.5
)


def main() -> None:
    result = {"presets": {}, "base_vs_official_M": {}}
    for name in PRESETS:
        result["presets"][name] = {k: round(v / 1e6, 3) for k, v in build_model(name).parameter_counts().items()}
    official_like = build_model(preset_config("base").replace(presence_head=False)).parameter_counts()
    for key, official in OFFICIAL_BASE_M.items():
        ours = round(official_like[key] / 1e6, 3)
        result["base_vs_official_M"][key] = {
            "ours": ours,
            "official": official,
            "match_to_0.1M": round(ours, 1) == official,
        }
        print(
            f"{key:<12} ours {ours:9.3f} M   official {official:6.1f} M   {'ok' if round(ours, 1) == official else 'MISMATCH'}"
        )
    out = Path(__file__).resolve().parent / "results" / "param_count.json"
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
