"""Parity with the official ReMamber code: run the authors' ReMamber_Conv or ReMamber_Mamba on the
CPU with random weights, convert its state dict with ``remamber.export.official.convert_official``
and compare our model's logits with theirs.

    pip install --no-deps --target /tmp/official-deps einops yacs          # the official code imports them
    git clone https://github.com/yyh-rain-song/ReMamber /tmp/official
    python benchmarks/official_parity.py /tmp/official --deps /tmp/official-deps
    python benchmarks/official_parity.py --only small --no-fixture         # REMAMBER_OFFICIAL=/tmp/official
    python benchmarks/official_parity.py /tmp/official --deps /tmp/official-deps --only base base-256 --scan easy \
        --no-fixture --out benchmarks/results/official_parity_easy_scan.json  # the official's fastest scan
    python benchmarks/official_parity.py /tmp/official --deps /tmp/official-deps --only small-mamba base-mamba

Five configurations, all with seeded random weights (every tensor perturbed so that no two
norms or biases are alike):

* ``small``: dims [8, 16, 32, 64], depths [1, 1, 2, 1], d_state 2, a 2-layer 64-wide CLIP text
  tower (vocab 100), channel scan 4x4, local-interaction width 32, 64x64 images, batch 2.  The
  official ReMamber hard-codes 768-d text and a 512-wide local interaction: for this config the
  harness rebuilds ``text_guidencee`` / ``local_text_fusion`` with the official classes at the
  small sizes, and passes ``input_res=4`` to the official Twister (its channel-scan size).  It
  writes the test fixture ``tests/fixtures/official_small/`` (the official checkpoint as .pth,
  the inputs and the official logits) that ``tests/test_official.py`` converts and checks.
* ``base``: the official configuration (``update_mamba_config("base")``, CLIP ViT-L/14 text
  config), 480x480, batch 1; ``base-256``: the same at 256x256.
* ``small-mamba``: ReMamber_Mamba (the Mamba decoder, its official depths [2, 4, 2, 2]) at dims
  [6, 12, 24, 48], depths [1, 1, 1, 1], d_state 2, SS2D ratio 1, MLP ratio 1, a 1-layer 16-wide
  CLIP text tower (vocab 100), channel scan 4x4, local-interaction width 8 in the Twister and 12
  in the decoder, 64x64 images, batch 2 (the decoder's ``text_guidencee`` / ``local_text_fusion``
  are rebuilt at these sizes as the backbone's are).  It writes
  ``tests/fixtures/official_small_mamba/`` (about 1 MB: the widths are as small as keeps float32
  rounding well below the test's tolerance; at dims[0] = 4 the LayerNorms over 2 channels
  amplify it to about 1e-4).
* ``base-mamba``: ReMamber_Mamba in the official base configuration, 480x480, batch 1.

Results go to ``benchmarks/results/official_parity.json`` (``--out``; a file that exists keeps
the results of configurations not run).

Reported per configuration: max / mean |ours - official| on the logits, and as the yardstick of
float32 rounding the same for our model run with its sequential reference scan instead of its
default one; forward seconds of both models (the fastest of two calls after a warm-up
call, each process keeping freed memory), conversion seconds, sizes.

The official model runs in a scratch subprocess (``--worker``), because running it on a CPU
needs stand-ins in ``sys.modules`` for what it imports but cannot be installed here: timm's
DropPath / trunc_normal_ / register_model, fvcore.nn, torchvision's VisionTransformer, triton
(its kernels are defined at import time but never called).  Before the model is built, its
CUDA/triton scans are swapped for its own pure-PyTorch functions: ``selective_scan_ref`` from
``selective_scan/test_selective_scan.py`` (``--scan easy``: the chunked ``selective_scan_easy``
from ``test_selective_scan_easy.py``) and ``CrossScan``/``CrossMerge`` (4 directions) and
``CrossScan_Ab_2direction``/``CrossMerge_Ab_2direction`` (the Twister's channel scan; what
``getCSM(2)``'s triton kernels compute) from ``vmamba_model/csms6s.py``.  The CLIP download is
replaced by a ``CLIPTextModel`` built from a config, the tokenizer by one that returns the
harness's token ids, and the pretrained-backbone load by nothing.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

from common import best_of, machine

from remamber.engine.allocator import keep_freed_memory
from remamber.utils.io import write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "official_parity.json"
# The official model of each variant: its builder in the official code's ``model`` package.
OFFICIAL_MODELS = {"conv": ("conv_segmenter", "ReMamber_Conv"), "mamba": ("mamba_segmenter", "ReMamber_Mamba")}
TIMED_RUNS = 2  # timed forward calls per model after one warm-up call; the fastest is reported

# CLIP ViT-L/14's text config (openai/clip-vit-large-patch14), as the official code downloads it.
CLIP_L14_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    initializer_range=0.02,
    initializer_factor=1.0,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)

CONFIGS = {
    "small": dict(
        image=64,
        batch=2,
        seed=0,
        arch=dict(dims=[8, 16, 32, 64], depths=[1, 1, 2, 1], ssm_d_state=2),
        text=dict(
            CLIP_L14_TEXT,
            vocab_size=100,
            hidden_size=64,
            intermediate_size=256,
            projection_dim=64,
            num_hidden_layers=2,
            num_attention_heads=1,
        ),
        channel_scan=4,
        local_hidden=32,
        variant="conv",
    ),
    "base": dict(
        image=480,
        batch=1,
        seed=0,
        arch={},
        text=dict(CLIP_L14_TEXT),
        channel_scan=None,
        local_hidden=None,
        variant="conv",
    ),
    "small-mamba": dict(
        image=64,
        batch=2,
        seed=0,
        arch=dict(dims=[6, 12, 24, 48], depths=[1, 1, 1, 1], ssm_d_state=2, ssm_ratio=1.0, mlp_ratio=1.0),
        text=dict(
            CLIP_L14_TEXT,
            vocab_size=100,
            hidden_size=16,
            intermediate_size=64,
            projection_dim=16,
            num_hidden_layers=1,
            num_attention_heads=1,
        ),
        channel_scan=4,
        local_hidden=8,
        decoder_local_hidden=12,
        variant="mamba",
    ),
}
CONFIGS["base-256"] = dict(CONFIGS["base"], image=256)  # the same model at 256 px (timings at both sizes)
CONFIGS["base-mamba"] = dict(CONFIGS["base"], variant="mamba")

# The configurations that write a test fixture: folder, checkpoint file name, what the model is.
FIXTURES = {
    "small": (
        REPO / "tests" / "fixtures" / "official_small",
        "official_conv_small.pth",
        "official ReMamber_Conv at small sizes: text_guidencee / local_text_fusion rebuilt with the official classes "
        "for 64-d text and width 32, Twister input_res=4; random weights perturbed (see perturb())",
    ),
    "small-mamba": (
        REPO / "tests" / "fixtures" / "official_small_mamba",
        "official_mamba_small.pth",
        "official ReMamber_Mamba at small sizes: the backbone's and the decoder's text_guidencee / local_text_fusion "
        "rebuilt with the official classes for 16-d text and widths 8 (backbone) and 12 (decoder), Twister "
        "input_res=4; random weights perturbed (see perturb())",
    ),
}


# ============================================================================ official side


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, mod)
    return mod


def _missing(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def install_stubs() -> list[str]:
    """Minimal stand-ins for the official code's imports that are not installed; returns their names."""
    import torch
    import torch.nn as nn

    stubbed = []
    if _missing("timm"):

        class DropPath(nn.Module):  # timm's stochastic depth (identity in eval)
            def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
                super().__init__()
                self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

            def forward(self, x):
                if self.drop_prob == 0.0 or not self.training:
                    return x
                keep = 1 - self.drop_prob
                mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
                return x * (mask / keep if self.scale_by_keep else mask)

        _module("timm")
        _module("timm.models")
        _module("timm.models.layers", DropPath=DropPath, trunc_normal_=nn.init.trunc_normal_)
        _module("timm.models.registry", register_model=lambda fn: fn)
        stubbed.append("timm")
    if _missing("fvcore"):

        def unavailable(*_a, **_k):
            raise RuntimeError("fvcore is a stand-in here (FLOP counting is not available)")

        _module("fvcore")
        _module(
            "fvcore.nn",
            FlopCountAnalysis=unavailable,
            flop_count_str=unavailable,
            flop_count=unavailable,
            parameter_count=unavailable,
        )
        stubbed.append("fvcore")
    if _missing("torchvision"):
        _module("torchvision")
        _module("torchvision.models", VisionTransformer=type("VisionTransformer", (nn.Module,), {}))
        stubbed.append("torchvision")
    if _missing("triton"):  # kernels are only decorated at import; the harness never calls them

        def unavailable(*_a, **_k):
            raise RuntimeError("triton is a stand-in here")

        _module("triton", jit=lambda fn: fn, next_power_of_2=unavailable, cdiv=unavailable)
        _module(
            "triton.language",
            constexpr=int,
            program_id=unavailable,
            arange=unavailable,
            load=unavailable,
            store=unavailable,
        )
        stubbed.append("triton")
    del torch
    return stubbed


def _function_from(path: Path, name: str, namespace: dict):
    """Take one top-level function out of a file (whose other module-level code we must not run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if node is None:
        raise SystemExit(f"{path} has no function {name}: is this the official ReMamber checkout?")
    code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec")
    exec(code, namespace)
    return namespace[name]


def swap_scans(official: Path, scan: str) -> None:
    """Point the official SS2D at its own pure-PyTorch scans (before any model is built)."""
    import torch
    import torch.nn.functional as F
    from einops import rearrange, repeat
    from vmamba_model import csms6s, vmamba

    ns = dict(torch=torch, F=F, rearrange=rearrange, repeat=repeat)
    if scan == "ref":
        fn = _function_from(official / "selective_scan" / "test_selective_scan.py", "selective_scan_ref", ns)
        call = lambda u, dt, A, B, C, D, bias, softplus: fn(u, dt, A, B, C, D, None, bias, softplus)  # noqa: E731
    else:
        fn = _function_from(official / "selective_scan" / "test_selective_scan_easy.py", "selective_scan_easy", ns)
        call = lambda u, dt, A, B, C, D, bias, softplus: fn(u, dt, A, B, C, D, bias, softplus)  # noqa: E731

    class PureScan:  # the interface of csms6s.SelectiveScanOflex.apply
        @staticmethod
        def apply(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, *_rest):
            return call(u, delta, A, B, C, D, delta_bias, delta_softplus)

    def get_csm(mode: int = 1):  # the triton uni-/bi-directional kernels compute what these compute
        pairs = {
            1: (csms6s.CrossScan_Ab_1direction, csms6s.CrossMerge_Ab_1direction),
            2: (csms6s.CrossScan_Ab_2direction, csms6s.CrossMerge_Ab_2direction),
        }
        return pairs[mode]

    vmamba.SelectiveScanOflex = vmamba.SelectiveScanCore = vmamba.SelectiveScanMamba = PureScan
    vmamba.CrossScanTriton, vmamba.CrossMergeTriton = csms6s.CrossScan, csms6s.CrossMerge
    vmamba.getCSM = get_csm


class FixedTokenizer:
    """Stands in for CLIPTokenizerFast: returns the harness's ids whatever the text."""

    def __init__(self):
        self.ids = self.mask = None

    def __call__(self, text, **_kwargs):
        return {"input_ids": self.ids, "attention_mask": self.mask}


def random_inputs(cfg: dict):
    """Seeded image batch and CLIP-like token ids (BOS, words, EOS = the highest id, padded with EOS)."""
    import torch

    g = torch.Generator().manual_seed(cfg["seed"] + 1)
    b, s, vocab = cfg["batch"], cfg["image"], cfg["text"]["vocab_size"]
    image = torch.randn(b, 3, s, s, generator=g)
    ids = torch.full((b, 20), vocab - 1, dtype=torch.long)
    mask = torch.zeros(b, 20, dtype=torch.long)
    lengths = [7, 20, 12, 3][:b]
    for row, n in enumerate(lengths):
        ids[row, 0] = vocab - 2
        ids[row, 1 : n - 1] = torch.randint(3, vocab - 2, (n - 2,), generator=g)
        mask[row, :n] = 1
    return image, ids, mask


def perturb(model, seed: int) -> None:
    """Seeded noise on every float tensor: no norm, bias, skip or running statistic keeps its init,
    and weights get a fan-in scaled share (the stock 0.02-std inits leave residual branches so
    small that a mix-up in them would hardly move the logits)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean"):
                t.copy_(0.1 * noise)
            elif name.endswith("dt_projs_bias"):  # step sizes ~0.02..1 instead of 0.001..0.1: the scans matter
                t.add_(3.0 + 0.1 * noise)
            elif name.endswith("A_logs") or t.dim() < 2:
                t.add_(0.1 * noise)
            else:  # Linear / conv weights (out, in, ...); the K-stacked scan projections (K, out, in)
                stacked = name.endswith(("x_proj_weight", "dt_projs_weight"))
                fan_in = t.shape[-1] if stacked else t[0].numel()
                t.add_(0.5 * noise / max(fan_in, 1) ** 0.5)


def timed_forward(call, runs: int = TIMED_RUNS):
    """The output of a warm-up call (numba compilation, first-touch memory) and the fastest of
    ``runs`` timed calls after it; both models are timed this way, each in a process that keeps
    freed memory (:mod:`remamber.engine.allocator`, as `remamber segment` and `remamber eval`)."""
    return call(), best_of(call, runs)[0]


def run_official(name: str, official: Path, work: Path, scan: str, threads: int) -> None:
    """Worker: build the official model, save its checkpoint, inputs and logits under ``work``."""
    import argparse as _argparse
    import warnings

    import torch
    import torch.nn as nn
    import transformers
    from safetensors.torch import save_file

    # transformers probes for torchvision / timm: load what we use of it before the stand-ins exist
    transformers.CLIPTextConfig, transformers.CLIPTextModel  # noqa: B018
    warnings.filterwarnings("ignore", category=FutureWarning)  # the official code's torch.cuda.amp decorators
    sys.path.insert(0, str(official))
    stubbed = install_stubs()
    torch.set_num_threads(threads)
    cfg = CONFIGS[name]
    swap_scans(official, scan)

    import importlib

    from model import base_segmenter, customized_model, utils

    text_cfg = transformers.CLIPTextConfig(**cfg["text"])
    tokenizer = FixedTokenizer()

    class CLIPTextFromConfig:  # replaces the download of openai/clip-vit-large-patch14
        @staticmethod
        def from_pretrained(*_a, **_k):
            return transformers.CLIPTextModel(text_cfg)

    base_segmenter.CLIPTextModel = CLIPTextFromConfig
    base_segmenter.CLIPTokenizerFast = type("Tok", (), {"from_pretrained": staticmethod(lambda *_a, **_k: tokenizer)})
    module_name, model_name = OFFICIAL_MODELS[cfg["variant"]]
    segmenter = importlib.import_module(f"model.{module_name}")
    segmenter.load_ckpt = lambda backbone, model_size: (backbone, ([], []))  # no pretrained VMamba
    official_config = utils.update_mamba_config
    segmenter.update_mamba_config = lambda size: {**official_config("base"), **cfg["arch"]}
    if cfg["channel_scan"]:
        twister_init = customized_model.Twister.__init__

        def init(self, *a, **k):
            k.setdefault("input_res", cfg["channel_scan"])
            twister_init(self, *a, **k)

        customized_model.Twister.__init__ = init

    torch.manual_seed(cfg["seed"])
    t0 = time.perf_counter()
    model, _ = getattr(segmenter, model_name)(img_size=cfg["image"], model_size="base")
    if cfg["text"]["hidden_size"] != 768 or cfg["local_hidden"]:
        # the official ReMamber hard-codes 768-d text and a 512-wide local interaction: same classes, small sizes
        text_dim = cfg["text"]["hidden_size"]
        owners = [(model.backbone, cfg["local_hidden"])]
        if cfg["variant"] == "mamba":  # the Mamba decoder has its own, one per level
            owners.append((model.decoder, cfg["decoder_local_hidden"]))
        for owner, hidden in owners:
            for i, old in enumerate(owner.text_guidencee):
                dim = old[0].out_features
                owner.text_guidencee[i] = nn.Sequential(nn.Linear(text_dim, dim), nn.ReLU())
                owner.local_text_fusion[i] = utils.ImageTextCorr(
                    visual_dim=dim, text_dim=text_dim, hidden_dim=hidden or 512, out_dim=dim
                )
    perturb(model, cfg["seed"] + 2)
    model.eval()
    build_s = time.perf_counter() - t0

    image, ids, mask = random_inputs(cfg)
    tokenizer.ids, tokenizer.mask = ids, mask
    with torch.no_grad():
        logits, forward_s = timed_forward(lambda: model(image, ["(ids come from the harness)"] * len(image)))

    state = model.state_dict()
    if not any(k.startswith("text_encoder.text_model.") for k in state):
        # transformers >= 5 dropped CLIPTextModel's ``text_model`` level; the official code ran
        # transformers 4.35 (its requirements.txt), whose names the released checkpoints carry
        state = {k.replace("text_encoder.", "text_encoder.text_model.", 1): v for k, v in state.items()}
    ckpt = {"model": state, "epoch": 0}
    if name == "base":  # like the official best_checkpoint.pth, which also stores its argparse arguments
        ckpt["args"] = _argparse.Namespace(model=model_name, input_size=cfg["image"])
    torch.save(ckpt, work / "official.pth")
    save_file(
        {"image": image, "input_ids": ids, "attention_mask": mask, "logits": logits.contiguous()},
        str(work / "io.safetensors"),
    )
    info = dict(
        stubbed_modules=stubbed,
        scan=scan,
        build_s=round(build_s, 2),
        forward_s=round(forward_s, 3),
        parameters=sum(t.numel() for t in state.values() if t.is_floating_point()),
        text_parameters=sum(p.numel() for p in model.text_encoder.parameters()),
        logits_shape=list(logits.shape),
    )
    (work / "official.json").write_text(json.dumps(info))


# ============================================================================ our side


def compare(name: str, official: Path, work: Path, scan: str, threads: int, deps: str | None) -> dict:
    """Run the official worker, convert its checkpoint, run ours, and measure the difference."""
    import torch
    from safetensors.torch import load_file

    from remamber.export.official import convert_official
    from remamber.hub.folders import load_pretrained
    from remamber.modeling.text import build_scratch_tokenizer
    from remamber.ops import scan_backend

    cmd = [
        sys.executable,
        __file__,
        str(official),
        "--worker",
        name,
        "--work",
        str(work),
        "--scan",
        scan,
        "--threads",
        str(threads),
    ] + (["--deps", deps] if deps else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"official {name} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    worker_s = time.perf_counter() - t0
    info = json.loads((work / "official.json").read_text())
    io = load_file(str(work / "io.safetensors"))

    torch.set_num_threads(threads)
    cfg = CONFIGS[name]
    # A word-level tokenizer that fits the vocabulary (the CLIP tokenizer may not be cached offline;
    # the comparison feeds token ids directly).
    words = [f"w{i}" for i in range(cfg["text"]["vocab_size"] - 4)]
    t0 = time.perf_counter()
    folder = convert_official(
        work / "official.pth", out=work / "ours", tokenizer=build_scratch_tokenizer(words), image_size=cfg["image"]
    )
    convert_s = time.perf_counter() - t0
    model = load_pretrained(folder).eval()
    with torch.no_grad():
        with scan_backend("ref"):  # our sequential reference scan: how far float32 rounding alone moves the logits
            ours_ref = model(io["image"], io["input_ids"], io["attention_mask"])
        model.fuse()  # timed as `remamber segment` runs it
        ours, ours_s = timed_forward(lambda: model(io["image"], io["input_ids"], io["attention_mask"]))
    ref = io["logits"]
    diff = (ours - ref).abs().max().item()
    result = dict(
        image_size=cfg["image"],
        batch=cfg["batch"],
        config=json.loads((folder / "config.json").read_text()),
        logits_shape=list(ref.shape),
        max_abs_diff=diff,
        max_abs_logit=ref.abs().max().item(),
        mean_abs_diff=(ours - ref).abs().mean().item(),
        ours_ref_scan_vs_official=(ours_ref - ref).abs().max().item(),
        ours_default_vs_ref_scan=(ours - ours_ref).abs().max().item(),
        official_forward_s=info["forward_s"],
        ours_forward_s=round(ours_s, 3),
        convert_s=round(convert_s, 2),
        official_worker_s=round(worker_s, 1),
        official_build_s=info["build_s"],
        official_scan=info["scan"],
        ours_scan=os.environ.get("REMAMBER_SCAN", "default"),
        parameters=info["parameters"],
        text_parameters=info["text_parameters"],
        checkpoint_bytes=(work / "official.pth").stat().st_size,
        stubbed_modules=info["stubbed_modules"],
    )
    print(
        f"{name}: max |ours - official| = {diff:.3e} (max |logit| {result['max_abs_logit']:.3g}; ours with its "
        f"reference scan vs its default: {result['ours_default_vs_ref_scan']:.3e}); "
        f"forward official {info['forward_s']:.2f} s, ours {ours_s:.2f} s; convert {convert_s:.1f} s",
        flush=True,
    )
    return result


def write_fixture(name: str, work: Path, result: dict, official_rev: str, command: str) -> None:
    """The test fixture of configuration ``name`` (:data:`FIXTURES`): the official checkpoint,
    inputs and logits, and how they were made."""
    import torch

    folder, ckpt_name, notes = FIXTURES[name]
    segmenter = {"conv": "ConvSegmentor", "mamba": "MambaSegmentor"}[CONFIGS[name]["variant"]]
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "official.pth", folder / ckpt_name)
    shutil.copyfile(work / "io.safetensors", folder / "io.safetensors")
    meta = dict(
        made_by=command,
        official_repo="yyh-rain-song/ReMamber",
        files={
            ckpt_name: f"{{'model': official {segmenter} state dict (transformers-4.35 text names), 'epoch': 0}}",
            "io.safetensors": "image (2, 3, 64, 64), input_ids / attention_mask (2, 20), logits (2, 1, 64, 64) of the official forward",
        },
        notes=notes,
        official_revision=official_rev,
        torch=torch.__version__,
        max_abs_diff_when_made=result["max_abs_diff"],
        image_size=result["image_size"],
        batch=result["batch"],
        config=CONFIGS[name],
    )
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def _revision(official: Path, given: str | None) -> str:
    if given:
        return given
    try:
        out = subprocess.run(["git", "-C", str(official), "rev-parse", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "official",
        nargs="?",
        default=os.environ.get("REMAMBER_OFFICIAL"),
        help="path of an official ReMamber checkout (default: $REMAMBER_OFFICIAL)",
    )
    ap.add_argument(
        "--deps",
        default=os.environ.get("REMAMBER_OFFICIAL_DEPS"),
        help="a pip --target folder with einops and yacs (default: $REMAMBER_OFFICIAL_DEPS)",
    )
    ap.add_argument("--only", nargs="+", choices=sorted(CONFIGS), help="run these configurations (default: all)")
    ap.add_argument("--scan", choices=["ref", "easy"], default="ref", help="the official pure-PyTorch scan to use")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--no-fixture", action="store_true", help="do not rewrite tests/fixtures/official_small (and _small_mamba)"
    )
    ap.add_argument("--official-rev", help="the official checkout's commit, for the record (default: git rev-parse)")
    ap.add_argument(
        "--out", type=Path, default=RESULTS, help="the JSON to write (default: results/official_parity.json)"
    )
    ap.add_argument("--worker", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.official:
        ap.error("give the path of an official ReMamber checkout (or set REMAMBER_OFFICIAL)")
    official = Path(args.official).resolve()
    if not (official / "model" / "conv_segmenter.py").is_file():
        ap.error(f"{official} is not an official ReMamber checkout (no model/conv_segmenter.py)")
    if args.deps:
        sys.path.insert(0, str(Path(args.deps).resolve()))
    keep_freed_memory()
    if args.worker:
        run_official(args.worker, official, Path(args.work), args.scan, args.threads)
        return
    for mod in ("einops", "yacs"):
        if _missing(mod):
            ap.error(f"the official code needs {mod}: pip install --no-deps --target DIR einops yacs, then --deps DIR")

    names = args.only or list(CONFIGS)
    command = "python benchmarks/official_parity.py " + " ".join(sys.argv[1:])
    rev = _revision(official, args.official_rev)
    host = machine(torch_threads=args.threads, python=platform.python_version())
    results = {}
    started = time.perf_counter()
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"parity-{name}-") as tmp:
            results[name] = dict(
                compare(name, official, Path(tmp), args.scan, args.threads, args.deps), command=command, machine=host
            )
            if name in FIXTURES and not args.no_fixture:
                write_fixture(name, Path(tmp), results[name], rev, command)

    record = dict(
        command=command,
        official_repo="yyh-rain-song/ReMamber",
        official_revision=rev,
        machine=host,
        total_s=round(time.perf_counter() - started, 1),
        results=results,
    )
    if args.out.exists() and args.only:  # keep the last results of the configurations not run
        old = json.loads(args.out.read_text())
        # each kept result with the machine it ran on (results of older runs: their file's machine)
        kept = {k: {"machine": old.get("machine"), **v} for k, v in old.get("results", {}).items()}
        record["results"] = {**kept, **results}
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
