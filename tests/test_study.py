"""The miniature reproduction's driver, end to end at toy scale with the tiny offline model (no Ray)."""
import json

import pytest

from diffreid.study import StudyConfig, run_study

TINY_BUILD = {
    "base_model": {"path": "diffreid:tiny"},
    "lpe": {"captioner": "toy", "max_phrases": 4},
    "refset": {"num_images": 2, "steps": 2, "height": 64, "width": 32, "batch_size": 2},
    "adapter": {"mode": "lora", "rank": 2, "alpha": 2, "steps": 2, "lr": 1e-3, "instance_batch_size": 2,
                "prior_batch_size": 2, "height": 64, "width": 32},
    "sampler": {"num_images": 4, "steps": 2, "height": 64, "width": 32, "output_height": 64, "output_width": 32,
                "batch_size": 4, "phrases_per_prompt": 0},
    "filter": {"filters": ["reid_ctf"], "threshold": 0.2},
    "filter_reid": {"model": {"backbone": "resnet18"}, "height": 64, "width": 32, "P": 3, "K": 2, "epochs": 1,
                    "warmup_epochs": 0, "milestones": [1], "num_workers": 0},
    "writer": {"image_format": "png"},
    "fidelity": {"reader": {"epochs": 1, "iters_per_epoch": 2}},
}
TRAIN = {"model": {"backbone": "resnet18"}, "height": 64, "width": 32, "P": 3, "K": 2, "epochs": 1,
         "warmup_epochs": 0, "milestones": [1], "num_workers": 0}


def world(seed, pid_offset, cam_offset):
    return {"ids_train": 4, "ids_test": 3, "cams": 2, "height": 64, "width": 32, "images_per_cam": [3, 4],
            "seed": seed, "pid_offset": pid_offset, "cam_offset": cam_offset}


@pytest.mark.slow
def test_study_runs_every_backbone_and_reports(tmp_path):
    cfg = StudyConfig.model_validate({
        "source": {"ids_train": 3, "ids_test": 1, "cams": 2, "height": 64, "width": 32, "images_per_cam": [3, 4]},
        "target": {"ids_train": 4, "ids_test": 3, "cams": 2, "height": 64, "width": 32, "pid_offset": 1000,
                   "cam_offset": 2, "images_per_cam": [3, 4]},
        "build": TINY_BUILD,
        "variants": {"lambda_0": ["adapter.prior_loss_weight=0"]},
        "pretrain": {"backbone": "resnet18", "height": 64, "width": 32, "epochs": 1, "warmup_epochs": 0,
                     "batch_size": 8, "loader_workers": 0, "randaugment": None},
        "finetune": {"settings": ["fs", "supervised"], "fractions": [50], "seeds": [0], "train": TRAIN},
        "ablation_finetune": {"settings": ["fs"]},
        "pretrain_seeds": [0, 1],
        "seeded_backbones": ["real S", "real S + Diff-Person", "real S + Diff-Person, no filter"],
        "filter_thresholds": [0.0, 2.0],
        "domains": {"inits": ["random", "real S + Diff-Person"], "uda_source": world(3, 300, 4),
                    "dg_sources": [world(4, 400, 6)], "dg_targets": [world(5, 500, 8), world(6, 600, 10)],
                    "finetune": {"cluster": {"k1": 5, "k2": 3, "min_samples": 2, "epochs": 1, "iters_per_epoch": 1,
                                             "P": 2, "K": 2}}},
    })
    out = run_study(cfg, tmp_path, progress=False)
    text = out["results"].read_text()
    for init in ("random", "real S", "real S + Diff-Person", "no filter", "lambda_0"):
        assert init in text
    assert (tmp_path / "pretrain" / "real_S_plus_Diff-Person_seed1" / "backbone.safetensors").is_file()
    seeds_table, gaps_table = text.split("## Over pre-training seeds")[1].split("##")[0].split("One sample per")
    rows = [line for line in seeds_table.splitlines() if line.startswith("| fs | 50 |")]
    assert len(rows) == 1 and rows[0].count("±") == 3  # b, c and c without filter, each over seeds 0 and 1
    gaps = [line for line in gaps_table.splitlines() if line.startswith("| fs | 50 | real S + Diff-Person")]
    assert len(gaps) == 2 and all(line.count("(n=2)") == 2 for line in gaps), gaps_table  # c and no filter vs b
    assert all(line.rstrip(" |").endswith(("yes", "no")) for line in gaps)
    sizes = json.loads((tmp_path / "pretrain_sets.json").read_text())
    assert sorted(sizes) == sorted(cfg.backbone_names())
    real = sizes["real S"]["images"]
    assert sizes["real S + Diff-Person, no filter"]["images"] == real + 3 * 4  # every generated image
    assert real <= sizes["real S + Diff-Person"]["images"] <= real + 3 * 4  # kept images only
    assert sizes["real S + Diff-Person, threshold 0"]["images"] == real + 3 * 4  # every score is >= 0
    assert sizes["real S + Diff-Person, threshold 2"]["images"] == real  # no score reaches 2
    assert sizes["real S + Diff-Person"]["identities"] == sizes["real S"]["identities"] == 3
    domains = text.split("## Unsupervised, domain adaptation, domain generalisation")[1].split("##")[0]
    for setting in ("unsupervised", "uda", "dg:market_layout[0]", "dg:market_layout[1]"):
        assert f"| {setting} | 100 |" in domains, domains
    assert "random mAP/R1" in domains and "real S + Diff-Person mAP/R1" in domains
    assert "real S mAP/R1" not in domains, "only the inits the domains section names"
    agreement = json.loads((tmp_path / "filter_agreement.json").read_text())
    assert set(agreement) == {"full", "lambda_0"}
    assert sum(part["images"] for part in agreement["full"].values()) == 3 * 4
    # a second run resumes: nothing is rebuilt, pre-trained or fine-tuned again
    runs = tmp_path / "finetune" / "main" / "results_runs.csv"
    before = runs.stat().st_mtime_ns, (tmp_path / "builds" / "full" / "manifest.parquet").stat().st_mtime_ns
    again = run_study(cfg, tmp_path, progress=False)["results"].read_text()
    assert again.split("## Time")[0] == text.split("## Time")[0]
    assert (runs.stat().st_mtime_ns, (tmp_path / "builds" / "full" / "manifest.parquet").stat().st_mtime_ns) == before


def test_seeded_backbones_must_name_a_backbone():
    with pytest.raises(ValueError, match="seeded_backbones.*'real S, no filter'.*choose from"):
        StudyConfig.model_validate({"seeded_backbones": ["real S, no filter"]})
    with pytest.raises(ValueError, match="domains.inits.*'real T'.*choose from"):
        StudyConfig.model_validate({"domains": {"inits": ["random", "real T"]}})
    cfg = StudyConfig.model_validate({"domains": {}}).domain_finetune_config("/w", {"real S + Diff-Person": "/c.st"})
    assert cfg.target.root == "/w/T" and cfg.uda_source.root == "/w/U"
    assert [r.root for r in cfg.dg_sources] == ["/w/DG-S1", "/w/DG-S2"]
    assert cfg.inits == {"random": None, "real S + Diff-Person": "/c.st"}
    names = StudyConfig.model_validate({"filter_thresholds": [0.1], "variants": {"lambda_0": []}}).backbone_names()
    assert names == ["real S", "real S + Diff-Person", "real S + Diff-Person, no filter",
                     "real S + Diff-Person, threshold 0.1", "real S + Diff-Person, lambda_0"]
