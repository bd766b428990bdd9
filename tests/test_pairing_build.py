"""Sources, the whole build (pixel features on generated images), variants, CLI and stats."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pairuni.cli import app
from pairuni.data.errors import DataError
from pairuni.data.io import read_records
from pairuni.data.schema import Pair, Quadruple
from pairuni.pairing.annotators import Outcome
from pairuni.pairing.build import run_build
from pairuni.pairing.complete import complete_records, to_quadruple
from pairuni.pairing.config import PairingConfig, SourcesConfig
from pairuni.pairing.sources import load_samples

N_BASE = 12


def _image(rng: np.random.Generator, base: np.ndarray | None = None) -> Image.Image:
    arr = rng.integers(0, 256, size=(16, 16, 3)) if base is None else base
    if base is not None:
        arr = np.clip(base + rng.normal(0, 12, size=base.shape), 0, 255)
    return Image.fromarray(arr.astype(np.uint8))


@pytest.fixture
def dataset(tmp_path):
    """12 understanding images; 12 generation images that are noisy copies of them (planted
    neighbours g_i ~ u_i) and 4 unrelated ones; one detection record, one duplicate image."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    bases = [rng.integers(0, 256, size=(16, 16, 3)).astype(float) for _ in range(N_BASE)]
    und_rows, gen_rows = [], []
    for i, base in enumerate(bases):
        Image.fromarray(base.astype(np.uint8)).save(tmp_path / f"img/u{i}.png")
        und_rows.append(
            {
                "qid": f"u{i}",
                "image": f"img/u{i}.png",
                "problem": f"What is in picture {i}?",
                "options": ["cat", "dog"],
                "answer": "A",
                "category": "counting",
            }
        )
        _image(rng, base).save(tmp_path / f"img/g{i}.png")
        gen_rows.append({"id": f"g{i}", "image": f"img/g{i}.png", "prompt": f"picture {i}"})
    for j in range(4):
        _image(rng).save(tmp_path / f"img/x{j}.png")
        gen_rows.append({"id": f"x{j}", "image": f"img/x{j}.png", "prompt": f"other {j}"})
    und_rows.append({**und_rows[0], "qid": "det", "category": "Object Detection"})
    und_rows.append({**und_rows[1], "qid": "dup"})  # same image file as u1
    (tmp_path / "und.jsonl").write_text("\n".join(json.dumps(r) for r in und_rows) + "\n")
    (tmp_path / "gen.jsonl").write_text("\n".join(json.dumps(r) for r in gen_rows) + "\n")
    return tmp_path


def _cfg(root, **overrides) -> PairingConfig:
    cfg = PairingConfig.model_validate(
        {
            "sources": {
                "understanding": [str(root / "und.jsonl")],
                "generation": [str(root / "gen.jsonl")],
                "columns": {"id": "qid", "question": "problem"},
            },
            "features": {"extractor": "pixels", "cache_dir": str(root / "cache")},
            "select": {"num_clusters": 3},
            "retrieve": {"threshold": 0.8},
        }
    )
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if name:
            setattr(getattr(cfg, section), name, value)
        else:
            setattr(cfg, key, value)
    return cfg


def _complete_all(root, cfg) -> str:
    """Completions for every sample (a stand-in annotator: fixed text)."""
    quads = []
    for task in ("understanding", "generation"):
        for r in load_samples(getattr(cfg.sources, task), task, cfg.sources).records:
            fields = (
                {"prompt": f"caption of {r.id}"}
                if task == "understanding"
                else {"question": f"about {r.id}?", "options": ["x", "y"], "answer": "B"}
            )
            quads.append(to_quadruple(task, r, fields))
    path = root / "quads.jsonl"
    path.write_text("\n".join(q.model_dump_json(by_alias=True) for q in quads) + "\n")
    return str(path)


def test_sources_map_columns_filter_categories_and_dedup(dataset):
    cfg = _cfg(dataset)
    und = load_samples(cfg.sources.understanding, "understanding", cfg.sources)
    assert [r.id for r in und.records] == [f"u{i}" for i in range(N_BASE)]
    assert und.dropped_category == 1 and und.dropped_duplicate == 1
    assert und.records[3].question == "What is in picture 3?"
    assert und.records[3].image.path.startswith(str(dataset))  # made absolute


def test_bad_record_error_names_file_line_and_field(dataset):
    rows = dataset / "bad.jsonl"
    rows.write_text('{"id": "a", "image": "img/u0.png", "question": "q", "answer": ""}\n')
    with pytest.raises(DataError, match=r"bad.jsonl.*line 1.*answer"):
        load_samples([str(rows)], "understanding", SourcesConfig())
    skipped = load_samples([str(rows)], "understanding", SourcesConfig(on_bad_record="skip"))
    assert len(skipped.skipped) == 1 and not skipped.records


def test_parquet_datasets_folder_and_image_folder_sources(dataset):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": "p0", "prompt": "a red square", "image": str(dataset / "img/g0.png")}]
    pq.write_table(pa.Table.from_pylist(rows), dataset / "gen.parquet")
    ds = datasets.Dataset.from_dict(
        {"id": ["d0"], "prompt": ["blue"], "image": [str(dataset / "img/g1.png")]}
    ).cast_column("image", datasets.Image())
    ds.save_to_disk(str(dataset / "hf"))
    folder = dataset / "folder"
    folder.mkdir()
    Image.open(dataset / "img/g2.png").save(folder / "a.png")
    (folder / "metadata.csv").write_text("file_name,prompt,id\na.png,green,f0\n")
    got = load_samples(
        [str(dataset / "gen.parquet"), str(dataset / "hf"), str(folder)],
        "generation",
        SourcesConfig(),
    )
    assert [r.id for r in got.records] == ["p0", "d0", "f0"]
    assert got.records[1].image.data is not None or got.records[1].image.path
    assert got.records[2].image.path == str((folder / "a.png").resolve())


def test_build_pairug_end_to_end(dataset):
    cfg = _cfg(dataset)
    quads = _complete_all(dataset, cfg)
    out = dataset / "pairs.jsonl"
    result = run_build(cfg, str(out), [quads], progress=False)
    pairs = list(read_records(out, Pair))
    aligned = [p for p in pairs if p.kind == "aligned"]
    retrieved = [p for p in pairs if p.kind == "retrieved"]
    assert len(aligned) == 3 and result.stats["aligned"] == 3
    # every sample is used at most once across both kinds
    used_u = [p.und_source_id for p in pairs if p.und_source_id]
    used_g = [p.gen_source_id for p in pairs if p.gen_source_id]
    assert len(used_u) == len(set(used_u)) and len(used_g) == len(set(used_g))
    # planted neighbours: a retrieved g_i is matched to u_i; unrelated images never pass 0.8
    for p in retrieved:
        assert p.und_source_id == "u" + p.gen_source_id[1:]
        assert p.similarity >= 0.8 and p.weight == pytest.approx(p.similarity**0.5)
    selected = {p.und_source_id or p.gen_source_id for p in aligned}
    expected = {f"g{i}" for i in range(N_BASE)} - selected - {f"u{i}" for i in range(N_BASE)}
    expected = {g for g in expected if "u" + g[1:] not in selected}
    assert {p.gen_source_id for p in retrieved} == expected
    # aligned pairs carry their completion
    for p in aligned:
        sid = p.und_source_id or p.gen_source_id
        assert p.gen_prompt == f"caption of {sid}" or p.und_question == f"about {sid}?"
    # deterministic for the seed
    run_build(cfg, str(dataset / "again.jsonl"), [quads], progress=False)
    assert (dataset / "again.jsonl").read_text() == out.read_text()


def test_missing_completions_are_listed_for_completion(dataset):
    cfg = _cfg(dataset)
    out = dataset / "pairs.jsonl"
    result = run_build(cfg, str(out), [], progress=False)
    assert len(result.needs_completion) == 3 and not out.exists()
    listed = list(dataset.glob("pairs.jsonl.needs-completion.*.jsonl"))
    assert sum(len(p.read_text().splitlines()) for p in listed) == 3
    dropped = run_build(_cfg(dataset, on_missing_completion="drop"), str(out), [], progress=False)
    assert dropped.stats["aligned"] == 0 and dropped.stats["retrieved"] > 0


@pytest.mark.parametrize("variant", ["aligned-only", "retrieved-only", "random-pairs", "unpaired"])
def test_variants(dataset, variant):
    cfg = _cfg(dataset, variant=variant)
    quads = _complete_all(dataset, cfg)
    result = run_build(cfg, str(dataset / "v.jsonl"), [quads], progress=False)
    kinds = {p.kind for p in result.pairs}
    if variant == "aligned-only":
        assert kinds == {"aligned"} and len(result.pairs) == 3
    elif variant == "retrieved-only":
        assert kinds == {"retrieved"} and len(result.pairs) == N_BASE  # all planted pairs
        assert all(p.und_source_id == "u" + p.gen_source_id[1:] for p in result.pairs)
    else:
        assert len(result.pairs) == N_BASE  # limited by the 12 understanding samples
        assert all(p.weight == 1.0 for p in result.pairs)
        assert len({p.und_source_id for p in result.pairs}) == N_BASE
        assert all(getattr(p, "unpaired", False) == (variant == "unpaired") for p in result.pairs)


def test_cli_build_and_stats(dataset):
    cfg = _cfg(dataset)
    quads = _complete_all(dataset, cfg)
    config = dataset / "c.yaml"
    import yaml

    config.write_text(yaml.safe_dump({"pairing": cfg.model_dump(mode="json")}))
    runner = CliRunner()
    out = dataset / "pairs.parquet"
    res = runner.invoke(
        app,
        [
            "pairs",
            "build",
            "-c",
            str(config),
            "--out",
            str(out),
            "--completions",
            quads,
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "3 aligned" in res.output
    res = runner.invoke(app, ["pairs", "stats", str(out), "--out-dir", str(dataset / "report")])
    assert res.exit_code == 0, res.output
    stats = json.loads((dataset / "report/stats.json").read_text())
    assert stats["by_kind"]["aligned"] == 3
    assert (dataset / "report/similarity.png").stat().st_size > 1000
    page = (dataset / "report/index.html").read_text()
    assert page.count("<tr>") == 1 + len(list(read_records(out, Pair)))
    missing = runner.invoke(app, ["pairs", "build", "-c", str(config), "--out", str(out) + "x"])
    assert missing.exit_code == 2 and "needs-completion" in missing.output


def test_quadruples_keep_extras(dataset):
    cfg = _cfg(dataset)
    rec = load_samples(cfg.sources.generation, "generation", cfg.sources).records[0]
    quad = to_quadruple("generation", rec, {"question": "q?", "options": ["a", "b"], "answer": "A"})
    assert (
        isinstance(quad, Quadruple) and quad.origin == "generation" and quad.prompt == "picture 0"
    )


def test_shapesworld_oracle_complete_then_build(tmp_path):
    """The whole `pairs` flow on ShapesWorld: oracle completion of both tasks, then build."""
    from pairuni.shapes.build import write_dataset

    und_path, gen_path = write_dataset(tmp_path / "shapes", 24, 24, seed=0, image_size=16)
    cfg = {
        "pairing": {
            "sources": {"understanding": [str(und_path)], "generation": [str(gen_path)]},
            "complete": {"backend": "oracle", "cache_dir": str(tmp_path / "ccache")},
            "features": {"extractor": "pixels", "cache_dir": str(tmp_path / "fcache")},
            "select": {"num_clusters": 6},
            "retrieve": {"threshold": 0.3},
        }
    }
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    for task in ("understanding", "generation"):
        res = runner.invoke(
            app,
            [
                "pairs",
                "complete",
                task,
                "-c",
                str(tmp_path / "c.yaml"),
                "--out",
                str(tmp_path / f"{task}.quads.jsonl"),
                "--no-progress",
            ],
        )
        assert res.exit_code == 0, res.output
        assert "completed 24" in res.output
    quads = list(read_records(tmp_path / "generation.quads.jsonl", Quadruple))
    assert all(q.answer in "ABCD" and len(q.options) == 4 for q in quads)
    res = runner.invoke(
        app,
        [
            "pairs",
            "build",
            "-c",
            str(tmp_path / "c.yaml"),
            "--out",
            str(tmp_path / "p.jsonl"),
            "--completions",
            str(tmp_path / "understanding.quads.jsonl"),
            "--completions",
            str(tmp_path / "generation.quads.jsonl"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    pairs = list(read_records(tmp_path / "p.jsonl", Pair))
    assert sum(p.kind == "aligned" for p in pairs) == 6
    assert all(p.similarity >= 0.3 for p in pairs)
    # every pair keeps the GenEval metadata of its generation side (the oracle's for captions),
    # and a retrieved pair the understanding side's columns under `und_`
    assert all(isinstance(p.model_extra.get("geneval"), dict) for p in pairs)
    retrieved = [p for p in pairs if p.kind == "retrieved"]
    assert retrieved and all("und_scene" in p.model_extra for p in retrieved)


def test_cli_features_fills_the_cache_and_errors_are_friendly(dataset):
    import yaml

    cfg = _cfg(dataset)
    config = dataset / "c.yaml"
    config.write_text(yaml.safe_dump({"pairing": cfg.model_dump(mode="json")}))
    runner = CliRunner()
    res = runner.invoke(app, ["pairs", "features", "-c", str(config), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "kept 12 of 14" in res.output and "(12, 768)" in res.output
    assert len(list((dataset / "cache").rglob("*.npz"))) >= 2
    bad = runner.invoke(
        app,
        ["pairs", "features", "-c", str(config), "--set", "pairing.features.extractor=clip"],
    )
    assert bad.exit_code == 2 and "model_dir" in bad.output


def test_pair_counts_by_hand():
    from pairuni.pairing.stats import pair_counts

    common = {"gen_prompt": "p", "und_image": "x.png", "und_question": "q", "und_answer": "a"}
    pairs = [
        Pair(pair_id="a", kind="aligned", category="Math", **common),
        Pair(pair_id="b", kind="retrieved", similarity=0.7, category="Math", **common),
        Pair(pair_id="c", kind="retrieved", similarity=0.9, category="GenEval", **common),
        Pair(pair_id="d", kind="retrieved", similarity=0.6, **common),
    ]
    got = pair_counts(pairs)
    assert got["by_kind"] == {"aligned": 1, "retrieved": 3}
    assert got["by_category"]["Math"] == {"aligned": 1, "retrieved": 1}
    assert got["by_category"]["(none)"] == {"aligned": 0, "retrieved": 1}
    assert got["retrieved_similarity"] == {"min": 0.6, "median": 0.7, "max": 0.9}


# --------------------------------------------------------------------------- issue 13


class EchoAnnotator:
    """Completions that quote what they complete, so a stale one is visible."""

    name = "echo"
    version = "1"

    def template_version(self, task: str) -> str:
        return self.version

    async def complete(self, task, record, image):
        if task == "understanding":
            return Outcome(fields={"prompt": f"caption: {record['question']}"})
        fields = {"question": f"about: {record['prompt']}?", "options": ["x", "y"], "answer": "A"}
        return Outcome(fields=fields)


def _echo_complete(cfg, out, inputs=None) -> None:
    for task in ("understanding", "generation"):
        paths = getattr(cfg.sources, task) if inputs is None else inputs.get(task)
        if paths:
            records = load_samples(paths, task, cfg.sources).records
            complete_records(records, task, out, EchoAnnotator(), cfg.complete, progress=False)


def _edit(path, column, suffix=" (edited)") -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row[column] += suffix
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_edited_sources_are_not_paired_with_stale_completions(dataset):
    cfg = _cfg(dataset)
    cfg.complete.cache_dir = str(dataset / "ccache")
    quads = dataset / "quads.jsonl"
    _echo_complete(cfg, quads)
    assert not run_build(cfg, str(dataset / "p1.jsonl"), [str(quads)]).needs_completion
    _edit(dataset / "und.jsonl", "problem")
    _edit(dataset / "gen.jsonl", "prompt")
    stale = run_build(cfg, str(dataset / "p2.jsonl"), [str(quads)])
    assert len(stale.needs_completion) == 3 and stale.stats["stale_completions"] == 3
    # complete what build lists, into the same file, and build again: the new text is paired
    todo = {
        task: [str(dataset / f"p2.jsonl.needs-completion.{task}.jsonl")]
        for task in ("understanding", "generation")
        if (dataset / f"p2.jsonl.needs-completion.{task}.jsonl").exists()
    }
    _echo_complete(cfg, quads, todo)
    done = run_build(cfg, str(dataset / "p3.jsonl"), [str(quads)])
    aligned = [p for p in done.pairs if p.kind == "aligned"]
    assert len(aligned) == 3 and not done.needs_completion
    for p in aligned:
        if p.origin == "understanding":
            assert p.und_question.endswith("(edited)")
            assert p.gen_prompt == f"caption: {p.und_question}"
        else:
            assert p.gen_prompt.endswith("(edited)")
            assert p.und_question == f"about: {p.gen_prompt}?"
        assert "source_sha256" not in (p.model_extra or {})


def test_both_tasks_in_one_completion_file_with_colliding_ids(tmp_path):
    """configs/pairs-paper.yaml's flow: both tasks complete into one quads.jsonl. With ids
    shared by the two tasks, `complete generation` must not take understanding lines for its
    own (it said "already done" and `build` asked for the same completions forever)."""
    import yaml

    from pairuni.shapes.build import write_dataset

    und_path, gen_path = write_dataset(tmp_path / "shapes", 24, 24, seed=0, image_size=16)
    for path in (und_path, gen_path):  # ids s0 .. s23 in both tasks
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for i, row in enumerate(rows):
            row["id"] = f"s{i}"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "pairing": {
            "sources": {"understanding": [str(und_path)], "generation": [str(gen_path)]},
            "complete": {"backend": "oracle", "cache_dir": str(tmp_path / "ccache")},
            "features": {"extractor": "pixels", "cache_dir": str(tmp_path / "fcache")},
            "select": {"num_clusters": 6},
            "retrieve": {"threshold": 0.3},
        }
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    pairs, quads = tmp_path / "p.jsonl", tmp_path / "quads.jsonl"
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, ["pairs", *args, "-c", str(config), "--no-progress"])

    assert invoke("build", "--out", str(pairs)).exit_code == 2  # lists what needs completion
    needs_g = tmp_path / "p.jsonl.needs-completion.generation.jsonl"
    n_g = len(needs_g.read_text().splitlines())
    assert n_g >= 1
    res = invoke("complete", "understanding", "--out", str(quads))  # every id s0 .. s23
    assert res.exit_code == 0 and "completed 24," in res.output, res.output
    res = invoke("complete", "generation", "--input", str(needs_g), "--out", str(quads))
    assert res.exit_code == 0 and f"completed {n_g}," in res.output, res.output
    res = invoke("build", "--out", str(pairs), "--completions", str(quads))
    assert res.exit_code == 0, res.output
    assert sum(p.kind == "aligned" for p in read_records(pairs, Pair)) == 6
