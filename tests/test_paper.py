"""Reproducing the ASCA paper: the window-division study, the primary-label protocol, BCE label
smoothing, waveform mixup, clamped relative offsets and the options the paper and CoAtNet name."""

from __future__ import annotations

import ast
import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from train_factory import make_tiny_data, run_cli, write_tiny_yaml

from asca_core.augment import TrainAugment, step_generator
from asca_core.config import AugmentConfig, Config, load_config
from asca_core.errors import ConfigError, DatasetError, ModelError
from asca_core.models import build_model, count_params
from asca_core.models.asca import GlobalWindowWarning
from asca_core.models.blocks import Resample, SqueezeExcite, TokenBatchNorm, TransformerBlock

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PAPER = (224, 224)
DIVISIONS = (7, 14, 16, 32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test of this module on one torch thread."""


def _pico(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("asca_pico", 5, input_size=PAPER, **overrides).eval()


# ------------------------------------------------------------------------- window division
def test_token_windows_at_224_are_all_global_attention_and_warn():
    for window in DIVISIONS:
        with pytest.warns(
            GlobalWindowWarning,
            match=rf"attn_window={window} tokens covers the whole token grid "
            r"of s4 \(7x7\) at input 224x224",
        ):
            _pico(attn_window=window)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _pico(attn_window=4)  # a 7 x 7 grid in 4 x 4 windows is local: no warning
        _pico(attn_division=16)


def test_window_divisions_give_distinct_models_at_224():
    x = torch.randn(2, 1, *PAPER, generator=torch.Generator().manual_seed(0))
    grids, params, logits = {}, {}, {}
    for d in DIVISIONS:
        model = _pico(attn_division=d)
        grids[d] = model.s4[0].attn.rel_bias.grid
        params[d] = count_params(model)
        with torch.no_grad():
            logits[d] = model(x)
        assert model.stage_strides()["s4"] == d and model.config["attn_division"] == d
    assert grids == {7: (32, 32), 14: (16, 16), 16: (14, 14), 32: (7, 7)}  # 224 / d tokens per side
    assert len(set(params.values())) == 4  # the bias tables differ in size
    for a in DIVISIONS:
        for b in DIVISIONS:
            if a < b:
                assert not torch.allclose(logits[a], logits[b], atol=1e-4), (a, b)
    # 32 input cells per token is what C-C-C-T has anyway: the very same model and logits.
    default = _pico()
    with torch.no_grad():
        assert torch.equal(default(x), logits[32])
    assert count_params(default) == params[32]


@pytest.mark.parametrize("layout", ["CCTT", "CTTT"])
def test_window_divisions_train_with_more_transformer_stages(layout):
    for d in (7, 32):  # upsampled and pooled token grids, odd grids after a transformer stage
        torch.manual_seed(0)
        model = build_model("asca_pico", 3, layout=layout, input_size=PAPER, attn_division=d, drop_path=0.0).train()
        logits = model(torch.randn(2, 1, *PAPER))
        F.cross_entropy(logits, torch.tensor([0, 2])).backward()
        assert torch.isfinite(logits).all()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        first = layout.index("T") + 1
        assert getattr(model, f"s{first}")[0].attn.rel_bias.grid == (224 // d, 224 // d)
        assert model.s4[0].attn.rel_bias.grid == (224 // d // 2 ** (4 - first),) * 2


def test_resample_pools_interpolates_and_keeps_identity():
    x = torch.randn(1, 3, 14, 14)
    assert Resample(16, 16)(x) is x
    torch.testing.assert_close(Resample(16, 32)(x), F.avg_pool2d(x, 2))
    torch.testing.assert_close(Resample(16, 32, "max")(x), F.max_pool2d(x, 2))
    assert Resample(16, 7)(x).shape[-2:] == (32, 32) and Resample(8, 14)(torch.randn(1, 3, 28, 28)).shape[-2:] == (
        16,
        16,
    )


def test_window_division_settings_are_checked():
    with pytest.raises(ModelError, match="attn_division must be an integer >= 4"):
        build_model("asca_pico", 3, attn_division=2)
    with pytest.raises(ModelError, match="attn_division applies to transformer stages; layout CCCC has none"):
        build_model("asca_pico", 3, layout="CCCC", attn_division=16)
    with pytest.raises(ConfigError, match=r"model.attn_division must be in \[4, 512\]"):
        load_config(None, ["model.attn_division=1000"])
    with pytest.raises(ModelError, match="attn_division applies to ASCA models only"):
        build_model("ast_tiny", 3, attn_division=16)


def test_older_run_configs_build_and_load_the_same_model(tmp_path):
    """A checkpoint whose config predates the new keys loads into the model it was saved from."""
    from asca_core.train.checkpoint import checkpoint_metadata, load_model_from_run, model_from_config, save_model

    cfg = load_config(None, ["model.name=asca_pico", "features.n_mels=64"])
    torch.manual_seed(0)
    model = model_from_config(cfg, 4).eval()
    assert not {"attn_division", "downsample_pool", "transformer_norm", "se_act"} & set(model.config)
    raw = cfg.to_dict()
    for section, keys in (
        ("model", ("attn_division", "downsample_pool", "transformer_norm", "se_act")),
        ("data", ("labels", "classes")),
        ("augment", ("mixup_domain",)),
    ):
        for key in keys:
            del raw[section][key]
    meta = checkpoint_metadata(cfg, ["a", "b", "c", "d"], 1)
    meta["config"] = yaml.safe_dump(raw, sort_keys=False)
    path = tmp_path / "old.safetensors"
    save_model(path, model, meta)
    loaded, loaded_cfg, _labels = load_model_from_run(path)
    assert loaded_cfg.model.attn_division is None and loaded_cfg.data.labels == "primary+secondary"
    assert loaded.config == model.config
    x = torch.randn(1, 1, 64, 320)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# ------------------------------------------------------------------------- label smoothing
def test_bce_label_smoothing_spreads_eps_over_the_classes():
    from asca_core.train.engine import loss_per_example

    logits = torch.randn(3, 264)
    target = F.one_hot(torch.tensor([0, 5, 263]), 264).float()
    eps = 0.1
    expected_target = target * (1 - eps) + eps / 264  # timm's BinaryCrossEntropy(smoothing=eps)
    assert expected_target.min() == pytest.approx(0.1 / 264)  # not 0.05: absent classes stay near 0
    expected = F.binary_cross_entropy_with_logits(logits, expected_target, reduction="none").mean(1)
    torch.testing.assert_close(loss_per_example(logits, target, "bce", eps), expected)
    plain = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
    torch.testing.assert_close(loss_per_example(logits, target, "bce", 0.0), plain)


def test_bce_label_smoothing_matches_timm():
    timm_loss = pytest.importorskip("timm.loss")
    from asca_core.train.engine import loss_per_example

    logits, labels = torch.randn(4, 10), torch.tensor([1, 3, 5, 9])
    ours = loss_per_example(logits, F.one_hot(labels, 10).float(), "bce", 0.1).mean() * 10  # timm sums classes
    theirs = timm_loss.BinaryCrossEntropy(smoothing=0.1, reduction="mean")(logits, labels) * 10
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("preset", ["paper_birdclef", "paper_birdclef_scratch"])
def test_paper_presets_follow_the_protocol(preset):
    cfg = load_config(CONFIGS / f"{preset}.yaml")
    assert cfg.data.labels == "primary"  # "we predicted only the primary labels"
    assert cfg.train.loss == "bce" and cfg.train.label_smoothing <= 1e-3
    assert cfg.model.layout == "CCCT" and cfg.features.input_size == PAPER
    assert cfg.augment.mixup_domain in ("logmel", "waveform")


# ------------------------------------------------------------------------- labels
def _metadata(shared_data: Path) -> list[dict[str, str]]:
    with (shared_data / "birdclef2023_sample" / "train_metadata.csv").open() as f:
        return list(csv.DictReader(f))


def test_birdclef_primary_labels_only(shared_data):
    from asca_core.data.formats import load_dataset

    root = shared_data / "birdclef2023_sample"
    rows = _metadata(shared_data)
    assert any(r["secondary_labels"] != "[]" for r in rows)
    both = load_dataset(root)
    primary = load_dataset(root, labels="primary")
    assert both.multi_label and len(both.classes) > 5
    assert not primary.multi_label and primary.classes == sorted({r["primary_label"] for r in rows})
    by_file = {Path(r["filename"]).name: r for r in rows}
    for clip in primary.clips:
        row = by_file[clip.path.name]
        assert clip.labels == (row["primary_label"],)
        assert clip.meta["secondary_labels"] == [
            s for s in ast.literal_eval(row["secondary_labels"]) if s != row["primary_label"]
        ]
    assert "rbsrob1" in both.classes and "rbsrob1" not in primary.classes  # a secondary-only species


def test_birdclef_fixed_class_list(shared_data, tmp_path):
    from asca_core.data.formats import load_dataset

    root = shared_data / "birdclef2023_sample"
    names = ["subbus1", "abethr1", "abhori1", "zzzzzz1"]  # one species with no clips, not sorted
    index = load_dataset(root, labels="primary", classes=names)
    assert index.classes == names
    assert {c.labels[0] for c in index.clips} == {"subbus1", "abethr1", "abhori1"}
    skipped = [p for p in index.problems if "not in the fixed class list" in p[1]]
    assert len(skipped) == 18 - len(index.clips) and any("abythr1" in p[1] for p in skipped)
    (tmp_path / "classes.txt").write_text("# species\nsubbus1\nabethr1\n\nabhori1\nzzzzzz1\n")
    (tmp_path / "labels.json").write_text(json.dumps(names))
    for file in ("classes.txt", "labels.json"):
        assert load_dataset(root, labels="primary", classes=tmp_path / file).classes == names
    with_secondary = load_dataset(root, classes=names + ["fotdro5"])
    assert any(c.labels == ("abhori1", "fotdro5") for c in with_secondary.clips)  # others dropped
    assert all(set(c.labels) <= set(names + ["fotdro5"]) for c in with_secondary.clips)
    (tmp_path / "dupes.txt").write_text("a\na\n")
    with pytest.raises(DatasetError, match="lists 'a' more than once"):
        load_dataset(root, classes=tmp_path / "dupes.txt")
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(root, classes=tmp_path / "missing.txt")


def test_data_labels_and_classes_reach_training_data(shared_data, tmp_path):
    from asca_core.train.engine import prepare_data

    root = shared_data / "birdclef2023_sample"
    cfg = load_config(
        CONFIGS / "paper_birdclef.yaml", [f"data.path={root}", "data.classes=[abethr1, abhori1, abythr1]"]
    )
    bundle = prepare_data(cfg, check_files=False)
    assert bundle.labels == ["abethr1", "abhori1", "abythr1"] and not bundle.multi_label
    assert len(bundle.index.clips) == 16
    both = prepare_data(
        cfg.replace("data.labels", "primary+secondary").replace("data.classes", None), check_files=False
    )
    assert both.multi_label and len(both.labels) > 5
    with pytest.raises(ConfigError, match="data.labels must be primary or primary"):
        load_config(None, ["data.labels=secondary"])


# ------------------------------------------------------------------------- waveform mixup
def _quiet_augment(**changes) -> AugmentConfig:
    return AugmentConfig(
        gain_db=0.0, time_shift=0.0, noise_prob=0.0, time_masks=0, freq_masks=0, mixup=True, mixup_prob=1.0, **changes
    )


def test_waveform_mixup_mixes_waves_before_the_front_end_with_the_targets_lambda():
    aug = TrainAugment(_quiet_augment(mixup_domain="waveform")).train()
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(6, 800, generator=g)
    target = torch.eye(6)  # one-hot rows: the mixed targets name each row's lambda and partner
    seen = []

    def features(w):
        seen.append(w.clone())
        return w[:, None, None, :] * 2.0  # (B, 1, 1, T)

    spec, mixed = aug(wave, target, features, step_generator(3))
    assert len(seen) == 1 and not torch.equal(mixed, target)
    torch.testing.assert_close(mixed.sum(1), torch.ones(6))
    mixed_rows = 0
    for i in range(6):
        lam = mixed[i, i]
        partners = [k for k in range(6) if k != i and mixed[i, k] > 0]
        expected = wave[i].clone()
        if partners:  # the wave is blended with the same lambda as the target
            j = partners[0]
            expected = lam * wave[i] + mixed[i, j] * wave[j]
            mixed_rows += 1
        torch.testing.assert_close(seen[0][i], expected)  # what the front end received
    assert mixed_rows >= 3
    torch.testing.assert_close(spec, seen[0][:, None, None, :] * 2.0)  # no second mixup on log-Mel


def test_logmel_mixup_stays_the_default_chain():
    cfg = AugmentConfig(mixup=True, mixup_prob=1.0)
    assert cfg.mixup_domain == "logmel"
    aug = TrainAugment(cfg).train()
    wave, target = torch.randn(4, 1600), torch.eye(4)

    def features(w):
        return w.view(4, 1, 16, 100)

    spec, mixed = aug(wave, target, features, step_generator(1))
    g = step_generator(1)  # the chain as the trainer ran it before waveform mixup existed
    ref = aug.mixup(aug.spec(features(aug.wave(wave, g)), g), target, g)
    assert torch.equal(spec, ref[0]) and torch.equal(mixed, ref[1])
    with pytest.raises(ConfigError, match="augment.mixup_domain must be logmel or waveform"):
        AugmentConfig(mixup_domain="spectrum")


# ------------------------------------------------------------------------- relative offsets
def test_longer_input_keeps_the_trained_bias_of_offset_one():
    model = build_model("asca_pico", 5, input_size=(128, 320)).eval()  # S4 grid 4 x 10
    rel = model.s4[0].attn.rel_bias
    table = rel.table.detach()  # (heads, 7, 19): offset (0, +-1) at [3, 9 +- 1]
    grid = (4, 30)  # three times the trained clip
    bias = rel(grid)[0].detach()  # (heads, N, N)
    w = grid[1]
    for q, k, column in ((5, 4, 10), (5, 6, 8), (0, 29, 0), (29, 0, 18)):  # +1, -1, -29 and +29 frames
        torch.testing.assert_close(bias[:, q, k], table[:, 3, column], rtol=0, atol=0)
    from asca_core.inspect.attention import relative_bias_tables

    tables = relative_bias_tables(model, (128, 960))["s4.0"]
    centre = tables.table.shape[-1] // 2
    torch.testing.assert_close(tables.table[:, 3, centre + 1], table[:, 3, 10])
    torch.testing.assert_close(tables.table[:, 3, centre - 1], table[:, 3, 8])
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 1, 128, 960))).all()
    assert w == 30


# ------------------------------------------------------------------------- options
def test_max_pool_downsampling_option():
    avg, mx = _pico(), _pico(downsample_pool="max")
    assert isinstance(mx.s2[0].shortcut.pool, torch.nn.MaxPool2d) and isinstance(
        mx.s4[0].shortcut.pool, torch.nn.MaxPool2d
    )
    assert isinstance(avg.s2[0].shortcut.pool, torch.nn.AvgPool2d)
    assert count_params(avg) == count_params(mx) and mx.config["downsample_pool"] == "max"
    block = mx.s4[0]
    x = torch.randn(1, block.norm1.normalized_shape[0], 14, 14)
    with torch.no_grad():
        y = block(x)
        assert y.shape[-2:] == (7, 7)
        x = torch.randn(1, 1, *PAPER)
        assert not torch.allclose(avg(x), mx(x))


def test_batchnorm_in_transformer_blocks_option():
    model = _pico(transformer_norm="batchnorm", layout="CCTT").train()
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    assert blocks and all(isinstance(b.norm1, TokenBatchNorm) and isinstance(b.norm2, TokenBatchNorm) for b in blocks)
    assert not any(isinstance(m, torch.nn.LayerNorm) for b in blocks for m in b.modules())
    logits = model(torch.randn(2, 1, 64, 128))
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    x = torch.randn(2, 1, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x[1:]), model(x)[1:], rtol=1e-5, atol=1e-5)  # running statistics


def test_se_activation_option():
    for act, kind in (("gelu", torch.nn.GELU), ("silu", torch.nn.SiLU), ("relu", torch.nn.ReLU)):
        model = _pico(se_act=act)
        ses = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
        assert ses and all(isinstance(se.act, kind) for se in ses)
    with pytest.raises(ModelError, match="se_act must be one of gelu, silu, relu"):
        _pico(se_act="tanh")


def test_model_options_flow_from_the_config():
    from asca_core.train.checkpoint import model_from_config

    cfg = load_config(
        None,
        [
            "model.name=asca_pico",
            "model.downsample_pool=max",
            "model.transformer_norm=batchnorm",
            "model.se_act=silu",
            "model.attn_division=16",
        ],
    )
    model = model_from_config(cfg, 3)
    assert {k: model.config[k] for k in ("downsample_pool", "transformer_norm", "se_act", "attn_division")} == {
        "downsample_pool": "max",
        "transformer_norm": "batchnorm",
        "se_act": "silu",
        "attn_division": 16,
    }
    for key, bad in (("downsample_pool", "min"), ("transformer_norm", "groupnorm"), ("se_act", "tanh")):
        with pytest.raises(ConfigError, match=f"model.{key} must be"):
            load_config(None, [f"model.{key}={bad}"])
    assert Config().model.downsample_pool == "avg" and Config().model.transformer_norm == "layernorm"


# ------------------------------------------------------------------------- the study on demo data
@pytest.mark.slow
def test_window_ablation_on_demo_data_gives_distinct_models(tmp_path):
    from asca_core.train.checkpoint import load_model_from_run

    data = make_tiny_data(tmp_path / "demo")
    config = write_tiny_yaml(
        tmp_path / "paper224.yaml",
        data,
        "features.shape=resize224",
        "train.epochs=1",
        "data.max_clips_per_class=3",
        "augment.mixup_domain=waveform",
        "augment.mixup=true",
    )
    out = tmp_path / "windows"
    result = run_cli(
        "ablate",
        "--config",
        str(config),
        "--windows",
        "7,14,16,32",
        "--seeds",
        "1",
        "--out",
        str(out),
        "--quiet",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["layout"], r["window"], r["grid"]) for r in rows] == [
        ("CCCT", "7", "32x32"),
        ("CCCT", "14", "16x16"),
        ("CCCT", "16", "14x14"),
        ("CCCT", "32", "7x7"),
    ]
    assert len({r["params"] for r in rows}) == 4
    assert "| CCCT | 16x16 | 14x14 | 1 |" in (out / "results.md").read_text()
    assert json.loads((out / "ablation.json").read_text())["windows"] == [7, 14, 16, 32]
    x = torch.randn(2, 1, *PAPER, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for d in DIVISIONS:
        model, cfg, _ = load_model_from_run(out / f"CCCT-w{d}-seed0")
        assert cfg.model.attn_division == d and model.s4[0].attn.rel_bias.grid == (224 // d,) * 2
        with torch.no_grad():
            outputs[d] = model(x)
    assert all(not torch.allclose(outputs[a], outputs[b], atol=1e-5) for a in DIVISIONS for b in DIVISIONS if a < b)
    bad = run_cli("ablate", "--config", str(config), "--windows", "7,x", "--out", str(tmp_path / "bad"))
    assert bad.returncode != 0 and "--windows must list window divisions" in bad.stderr
