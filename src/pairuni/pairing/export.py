"""A PairUG file as the data ByteDance-Seed's Bagel trainer reads (`pairuni pairs export`).

    result = export_bagel("pairug.jsonl", "bagel-pairug", BagelExportOptions())
    print(result.summary())

The paper fine-tunes Bagel-14B on PairUG-16k with Bagel's own trainer (supervised, not RL),
understanding and generation mixed 1:1 at 512 px (arXiv 2510.25682, Table 4b and App. E). Every
pair gives one sample of each task, in the formats of github.com/ByteDance-Seed/Bagel:

- `t2i/<name>-t2i-KKKKK-of-NNNNN.parquet`: the `t2i_pretrain` group (data/t2i_dataset.py reads
  `row['image']` as encoded bytes and `json.loads(row['captions'])` as a dict whose values are
  captions). The caption is the pair's `gen_prompt`, the image the one that prompt describes: the
  generation sample's own `gen_image` (an aligned pair without one falls back to `und_image`,
  the same instance). Rows are dealt round-robin, so every shard mixes aligned and retrieved.
- `vlm/<name>_und.jsonl` and `vlm/images/`: the `vlm_sft` group (data/vlm_dataset.py), LLaVA
  `conversations` whose human turn holds the `<image>` placeholder; image paths are relative to
  the JSONL's folder, which is the group's `data_dir`.
- `dataset_info.py` / `.json` (the DATASET_INFO entries to merge into Bagel's
  data/dataset_info.py), `parquet_info.json` (row groups per shard), `bagel_data.yaml` (the
  `--dataset_config_file`, weight 1 per group) and `README.txt` (the trainer's command line).

Every pair is checked before anything is written (a blank prompt, question or answer, a missing
or undecodable image, a retrieved pair without its generation image): by default the first bad
pair is a `DataError` naming file, line/row and field; with ``on_bad_record="skip"`` bad pairs
are left out whole (both tasks keep the same count) and listed in `rejects.jsonl`. PNG and JPEG
bytes are kept as they are, other formats re-encoded to PNG; Bagel resizes them itself. Every
file is written to a temporary name and renamed; the data config, `dataset_info.*` and README
are removed first and written last, so an export that was killed has no data config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pairuni.data.errors import DataError, SkippedRecord
from pairuni.data.images import check_images
from pairuni.data.io import OnBadRecord, RecordSet, atomic_output, read_records
from pairuni.data.schema import ImageRef, Pair

FORMATS = ("bagel",)
ImageLinking = Literal["copy", "link"]

# Bagel's group names: the keys of DATASET_REGISTRY in data/dataset_info.py.
T2I_GROUP = "t2i_pretrain"
VLM_GROUP = "vlm_sft"
IMAGE_PLACEHOLDER = "<image>"  # what SftJSONLIterableDataset.change_format splits on

# Bagel's own MMMU evaluation asks multiple-choice questions this way
# (eval/vlm/eval/mmmu/evaluate_mmmu.py), so the fine-tuned model is trained as it is tested.
MC_TEMPLATE = "{question}\nAnswer with the option's letter from the given choices directly."
OPEN_TEMPLATE = "{question}"

DATA_CONFIG = "bagel_data.yaml"
DATASET_INFO_PY = "dataset_info.py"
DATASET_INFO_JSON = "dataset_info.json"
PARQUET_INFO = "parquet_info.json"
README = "README.txt"
REJECTS = "rejects.jsonl"
# Written last and removed first: their presence says the export finished.
COMPLETION_FILES = (DATA_CONFIG, DATASET_INFO_PY, DATASET_INFO_JSON, PARQUET_INFO, README)

# Formats Bagel's PIL reads whose bytes we keep as they are (MPO is a JPEG with extra frames).
KEPT_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg"}
PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}


@dataclass(frozen=True)
class BagelExportOptions:
    """How to export. The defaults suit the paper's run (8 GPUs, one data worker each)."""

    t2i_shards: int = 64
    """Parquet shards of the T2I group (capped at the number of pairs). Bagel hands whole files
    to ranks and workers and drops the remainder, so use a multiple of GPUs x data workers."""
    rows_per_row_group: int = 64
    """Bagel loads one row group at a time into pandas: small groups keep workers' memory low."""
    images: ImageLinking = "copy"
    """`copy` the understanding images into vlm/images/, or `link` them (symlinks)."""
    data_root: str | None = None
    """The export folder's path on the machine that runs Bagel (default: its absolute path
    here); DATASET_INFO, parquet_info.json and the README use it."""
    name: str = "pairug"
    """Prefix of the DATASET_INFO keys (`<name>_t2i`, `<name>_und`) and of the data files."""
    mc_template: str = MC_TEMPLATE
    open_template: str = OPEN_TEMPLATE
    on_bad_record: OnBadRecord = "error"
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.t2i_shards < 1 or self.rows_per_row_group < 1:
            raise ValueError("t2i_shards and rows_per_row_group must be at least 1")
        if self.images not in ("copy", "link"):
            raise ValueError(f"images={self.images!r} is not 'copy' or 'link'")
        if self.on_bad_record not in ("error", "skip"):
            raise ValueError(f"on_bad_record={self.on_bad_record!r} is not 'error' or 'skip'")
        for template in (self.mc_template, self.open_template):
            if "{question}" not in template:
                raise ValueError(f"the template {template!r} has no `{{question}}` placeholder")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ValueError(f"name={self.name!r} must be a plain word, e.g. 'pairug'")


@dataclass
class ShardInfo:
    path: Path
    num_rows: int
    num_row_groups: int


@dataclass
class ExportResult:
    out_dir: Path
    total: int
    """Pairs in the input, good or bad."""
    exported: int
    """Pairs exported: each gave one T2I row and one VLM conversation."""
    shards: list[ShardInfo]
    jsonl: Path
    data_config: Path
    skipped: list[SkippedRecord] = field(default_factory=list)
    rejects_file: Path | None = None

    def summary(self) -> str:
        line = (
            f"exported {self.exported} of {self.total} pairs to {self.out_dir}: "
            f"{self.exported} T2I rows in {len(self.shards)} parquet shards, "
            f"{self.exported} VLM conversations in {self.jsonl.name}"
        )
        if self.skipped:
            line += f"; skipped {len(self.skipped)} bad pairs, listed in {self.rejects_file}"
        return line


# --------------------------------------------------------------------------- entry point


def export_bagel(
    pairs_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: BagelExportOptions | None = None,
) -> ExportResult:
    """Write the PairUG file `pairs_path` into `out_dir` in Bagel's formats (module docstring)."""
    opts = options or BagelExportOptions()
    out = Path(out_dir)
    pairs = checked_pairs(pairs_path, opts)
    if not pairs.records:
        raise ValueError(f"{pairs_path}: no pair to export ({pairs.summary()})")
    out.mkdir(parents=True, exist_ok=True)
    for name in COMPLETION_FILES:
        (out / name).unlink(missing_ok=True)
    root = opts.data_root or os.path.abspath(out)
    shards = write_t2i_shards(pairs, out / "t2i", opts)
    jsonl = write_vlm_jsonl(pairs, out / "vlm", opts)
    remove_stale_shards(out / "t2i", opts.name, keep=[s.path for s in shards])
    rejects = write_rejects(out / REJECTS, pairs.skipped)
    info = dataset_info(root, opts.name, shards, jsonl.name, len(pairs.records))
    write_text(out / PARQUET_INFO, json.dumps(parquet_info(root, shards), indent=2) + "\n")
    write_text(out / DATASET_INFO_JSON, json.dumps(info, indent=2) + "\n")
    write_text(out / DATASET_INFO_PY, dataset_info_py(info))
    write_text(out / README, readme(root, opts, len(pairs.records), len(shards)))
    write_text(out / DATA_CONFIG, data_config_yaml(opts.name, len(shards), len(pairs.records)))
    return ExportResult(
        out_dir=out,
        total=pairs.total,
        exported=len(pairs.records),
        shards=shards,
        jsonl=jsonl,
        data_config=out / DATA_CONFIG,
        skipped=list(pairs.skipped),
        rejects_file=rejects,
    )


# --------------------------------------------------------------------------- checks


def checked_pairs(path: str | os.PathLike[str], opts: BagelExportOptions) -> RecordSet[Pair]:
    """The pairs of `path` that make a Bagel sample of each task; bad ones raise or are
    skipped (counted in `skipped`) as `opts.on_bad_record` says."""
    pairs = read_records(path, Pair, on_bad_record=opts.on_bad_record)
    pairs = _drop_bad(pairs, _text_or_target_problem, opts.on_bad_record)
    return check_images(
        pairs, ["gen_image", "und_image"], on_bad_record=opts.on_bad_record, progress=opts.progress
    )


def _text_or_target_problem(pair: Pair) -> tuple[str, str] | None:
    """(field, reason) of the first thing that stops the pair from being exported, or None."""
    blanks = {
        "gen_prompt": "the generation prompt is blank; it is the T2I sample's caption",
        "und_question": "the question is blank; it is the VLM sample's human turn",
        "und_answer": "the answer is blank; it is the VLM sample's gpt turn (the target)",
    }
    for name, reason in blanks.items():
        if not getattr(pair, name).strip():
            return name, reason
    if pair.kind == "retrieved" and pair.gen_image is None:
        return "gen_image", (
            "a retrieved pair has no generation image: the T2I target must be the image its "
            "gen_prompt describes, and und_image is a different (only similar) image"
        )
    return None


def _drop_bad(
    pairs: RecordSet[Pair],
    problem_of: Callable[[Pair], tuple[str, str] | None],
    mode: OnBadRecord,
) -> RecordSet[Pair]:
    keep: list[int] = []
    skipped: list[SkippedRecord] = []
    for position, pair in enumerate(pairs.records):
        problem = problem_of(pair)
        if problem is None:
            keep.append(position)
            continue
        path, index, kind = pairs.locate(position)
        error = DataError(path, index, problem[0], problem[1], index_kind=kind)
        if mode == "error":
            raise error
        skipped.append(SkippedRecord.from_error(error))
    if not skipped:
        return pairs
    return dataclasses.replace(
        pairs,
        records=[pairs.records[i] for i in keep],
        locations=[pairs.locations[i] for i in keep],
        skipped=[*pairs.skipped, *skipped],
    )


def generation_target(pair: Pair) -> tuple[str, ImageRef]:
    """(field, image) that the pair's gen_prompt describes: the T2I training target."""
    if pair.gen_image is not None:
        return "gen_image", pair.gen_image
    # Checked before: only aligned pairs get here, and their two sides are one instance.
    return "und_image", pair.und_image


# --------------------------------------------------------------------------- images


def image_for_bagel(
    ref: ImageRef, pairs: RecordSet[Pair], position: int, field_name: str
) -> tuple[bytes, str]:
    """(encoded bytes, extension): PNG and JPEG exactly as they are, other formats as PNG."""
    try:
        data = ref.read_bytes(pairs.base_dir)
    except OSError as err:  # checked a moment ago; gone since
        path, index, kind = pairs.locate(position)
        reason = f"cannot read image {ref.resolve(pairs.base_dir)}: {err.strerror or err}"
        raise DataError(path, index, field_name, reason, index_kind=kind) from err
    return encoded_for_bagel(data)


def encoded_for_bagel(data: bytes) -> tuple[bytes, str]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.format in KEPT_FORMATS:
            return data, KEPT_FORMATS[image.format]
        pixels = image if image.mode in PNG_MODES else image.convert("RGB")
        buffer = io.BytesIO()
        pixels.save(buffer, format="PNG")
    return buffer.getvalue(), ".png"


# --------------------------------------------------------------------------- T2I parquet


def t2i_caption(prompt: str) -> str:
    """The `captions` cell: JSON of a dict, every value a caption (Bagel picks one at random)."""
    return json.dumps({"caption": prompt}, ensure_ascii=False)


def shard_name(name: str, index: int, count: int) -> str:
    return f"{name}-t2i-{index:05d}-of-{count:05d}.parquet"


def write_t2i_shards(
    pairs: RecordSet[Pair], folder: Path, opts: BagelExportOptions
) -> list[ShardInfo]:
    """One parquet shard after another; row i goes to shard i mod n."""
    count = min(opts.t2i_shards, len(pairs.records))
    shards = []
    for index in _progress(range(count), opts.progress, "writing T2I shards"):
        positions = range(index, len(pairs.records), count)
        target = folder / shard_name(opts.name, index, count)
        shards.append(_write_shard(target, _t2i_rows(pairs, positions), opts.rows_per_row_group))
    return shards


def _t2i_rows(pairs: RecordSet[Pair], positions: Iterable[int]) -> Iterator[dict[str, Any]]:
    for position in positions:
        pair = pairs.records[position]
        field_name, ref = generation_target(pair)
        data, _ = image_for_bagel(ref, pairs, position, field_name)
        yield {"image": data, "captions": t2i_caption(pair.gen_prompt), "pair_id": pair.pair_id}


def _write_shard(target: Path, rows: Iterator[dict[str, Any]], group_size: int) -> ShardInfo:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # `image` is plain binary: Bagel does Image.open(io.BytesIO(row['image'])).
    schema = pa.schema(
        [("image", pa.binary()), ("captions", pa.string()), ("pair_id", pa.string())]
    )
    num_rows = 0
    with atomic_output(target) as temp:
        with pq.ParquetWriter(temp, schema) as writer:
            for batch in _batches(rows, group_size):
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                num_rows += len(batch)
        num_row_groups = pq.read_metadata(temp).num_row_groups
    return ShardInfo(target, num_rows, num_row_groups)


def _batches(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def remove_stale_shards(folder: Path, name: str, keep: Sequence[Path]) -> None:
    """Bagel reads every .parquet in its data_dir: shards of an earlier export must go."""
    wanted = {p.name for p in keep}
    for old in folder.glob(f"{name}-t2i-*.parquet"):
        if old.name not in wanted:
            old.unlink()


# --------------------------------------------------------------------------- VLM JSONL


def human_turn(pair: Pair, opts: BagelExportOptions) -> str:
    """The placeholder, then the question with its options lettered as in training."""
    from pairuni.policy.prompts import format_question

    template = opts.mc_template if pair.und_options else opts.open_template
    text = format_question(pair.und_question, pair.und_options, template)
    return f"{IMAGE_PLACEHOLDER}\n{text}"


def conversation(pair: Pair, image: str, opts: BagelExportOptions) -> dict[str, Any]:
    return {
        "id": pair.pair_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": human_turn(pair, opts)},
            {"from": "gpt", "value": pair.und_answer},
        ],
    }


def write_vlm_jsonl(pairs: RecordSet[Pair], folder: Path, opts: BagelExportOptions) -> Path:
    """The conversations, in the pair file's order (Bagel shuffles lines: `shuffle_lines`)."""
    target = folder / f"{opts.name}_und.jsonl"
    lines = []
    bar = _progress(range(len(pairs.records)), opts.progress, "writing VLM images")
    for position in bar:
        pair = pairs.records[position]
        image = place_image(pair.und_image, pairs, position, folder, opts.images)
        lines.append(json.dumps(conversation(pair, image, opts), ensure_ascii=False) + "\n")
    write_text(target, "".join(lines))
    return target


def place_image(
    ref: ImageRef, pairs: RecordSet[Pair], position: int, folder: Path, linking: ImageLinking
) -> str:
    """Put the image into folder/images/ under its content hash; the path relative to `folder`
    (Bagel joins it to the group's data_dir). A file already there has that content."""
    data, suffix = image_for_bagel(ref, pairs, position, "und_image")
    relative = f"images/{hashlib.sha256(data).hexdigest()[:20]}{suffix}"
    target = folder / relative
    if target.exists():
        return relative
    source = ref.resolve(pairs.base_dir)
    unchanged = ref.data is None and suffix in KEPT_FORMATS.values() and source is not None
    if linking == "link" and unchanged:
        _atomic_symlink(Path(os.path.abspath(source)), target)
    else:
        with atomic_output(target) as temp:
            temp.write_bytes(data)
    return relative


def _atomic_symlink(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.symlink(source, temp)
        os.replace(temp, target)
    finally:
        if temp.is_symlink():
            temp.unlink()


# --------------------------------------------------------------------------- metadata


def dataset_info(
    root: str, name: str, shards: Sequence[ShardInfo], jsonl_name: str, count: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """The DATASET_INFO entries, keyed like Bagel's data/dataset_info.py.

    No `parquet_info_path` for the T2I entry: Bagel's dataset_base.py would pass `parquet_info`
    on to T2IIterableDataset, whose __init__ does not take it.
    """
    return {
        T2I_GROUP: {
            f"{name}_t2i": {
                "data_dir": f"{root}/t2i",
                "num_files": len(shards),
                "num_total_samples": count,
            }
        },
        VLM_GROUP: {
            f"{name}_und": {
                "data_dir": f"{root}/vlm",
                "jsonl_path": f"{root}/vlm/{jsonl_name}",
                "num_total_samples": count,
            }
        },
    }


def parquet_info(root: str, shards: Sequence[ShardInfo]) -> dict[str, dict[str, int]]:
    """Bagel's parquet_info layout ({shard path: {"num_row_groups": n}}, as its parquet
    datasets look it up by os.path.join(data_dir, file)), with the row count added."""
    return {
        f"{root}/t2i/{s.path.name}": {"num_row_groups": s.num_row_groups, "num_rows": s.num_rows}
        for s in shards
    }


def dataset_info_py(info: dict[str, Any]) -> str:
    body = json.dumps(info, indent=4)  # only strings and ints: valid Python as well
    return (
        "# DATASET_INFO entries for Bagel's data/dataset_info.py, written by\n"
        "# `pairuni pairs export --format bagel`. Paste this at the end of that file; the group\n"
        "# keys are those of its DATASET_REGISTRY.\n"
        f"PAIRUG_DATASET_INFO = {body}\n\n"
        "for _group, _entries in PAIRUG_DATASET_INFO.items():\n"
        "    DATASET_INFO.setdefault(_group, {}).update(_entries)\n"
    )


def data_config(name: str, num_shards: int, count: int) -> dict[str, Any]:
    """Bagel's --dataset_config_file: one group per task, weight 1 each (the paper's 1:1).

    The T2I transform resizes to 512 px on the long side (max = min = 512, stride 16 = the VAE's
    downsampling times its latent patch), the paper's generation resolution; the VLM transform
    and frame sampler are Bagel's data/configs/example.yaml (SftJSONLIterableDataset requires a
    frame sampler even for images). `num_used_data` counts files for T2I, lines for VLM.
    """
    return {
        T2I_GROUP: {
            "dataset_names": [f"{name}_t2i"],
            "image_transform_args": {
                "image_stride": 16,
                "max_image_size": 512,
                "min_image_size": 512,
            },
            "is_mandatory": True,
            "num_used_data": [num_shards],
            "weight": 1,
        },
        VLM_GROUP: {
            "dataset_names": [f"{name}_und"],
            "image_transform_args": {
                "image_stride": 14,
                "max_image_size": 980,
                "min_image_size": 378,
                "max_pixels": 2_007_040,
            },
            "frame_sampler_args": {"max_num_frames": 12, "min_num_frames": 8},
            "is_mandatory": True,
            "shuffle_lines": True,
            "shuffle_seed": 0,
            "num_used_data": [count],
            "weight": 1,
        },
    }


def data_config_yaml(name: str, num_shards: int, count: int) -> str:
    import yaml

    header = (
        "# Bagel --dataset_config_file for PairUG (pairuni pairs export --format bagel):\n"
        "# understanding and generation mixed 1:1, generation at 512 px.\n"
    )
    body = yaml.safe_dump(data_config(name, num_shards, count), sort_keys=False)
    return header + body


def trainer_command(root: str) -> str:
    """Bagel's fine-tuning command of TRAIN.md with this export's data config."""
    return (
        "torchrun \\\n"
        "  --nnodes=$num_nodes \\\n"
        "  --node_rank=$node_rank \\\n"
        "  --nproc_per_node=8 \\\n"
        "  --master_addr=$master_addr \\\n"
        "  --master_port=$master_port \\\n"
        "  train/pretrain_unified_navit.py \\\n"
        f"  --dataset_config_file {root}/{DATA_CONFIG} \\\n"
        "  --model_path $model_path \\\n"
        "  --layer_module Qwen2MoTDecoderLayer \\\n"
        "  --max_latent_size 64 \\\n"
        "  --resume-from $model_path \\\n"
        "  --finetune_from_hf True \\\n"
        "  --auto_resume True \\\n"
        "  --resume-model-only True \\\n"
        "  --finetune-from-ema True \\\n"
        "  --log_every 1 \\\n"
        "  --lr 2e-5 \\\n"
        "  --num_workers 1 \\\n"
        "  --expected_num_tokens 10240 \\\n"
        "  --max_num_tokens 11520 \\\n"
        "  --max_num_tokens_per_sample 10240 \\\n"
        "  --total_steps $total_steps \\\n"
        "  --results_dir $output_path \\\n"
        "  --checkpoint_dir $ckpt_path\n"
    )


README_TEMPLATE = """\
PairUG for Bagel, written by `pairuni pairs export --format bagel` (pairuni docs/bagel.md)
============================================================================================

{count} pairs, each one sample of each task (the paper's SFT of Bagel-14B on PairUG-16k,
arXiv 2510.25682 Table 4b: understanding and generation mixed 1:1, generation at 512 px).

Files (paths as Bagel will see them: {root})
  t2i/{name}-t2i-*.parquet   {num_shards} shards, group t2i_pretrain: columns `image` (PNG/JPEG
                             bytes of the image the prompt describes), `captions` (JSON
                             {{"caption": gen_prompt}}), `pair_id`
  vlm/{name}_und.jsonl       group vlm_sft: LLaVA `conversations`, human "<image>\\n<question,
                             lettered options>", gpt "<answer>"; `image` is relative to vlm/
  vlm/images/                the understanding images (named by content hash)
  {dataset_info_py}            DATASET_INFO entries ({name}_t2i, {name}_und); also as .json
  parquet_info.json          row groups and rows per shard (t2i_pretrain does not read it)
  {data_config}            the --dataset_config_file: weight 1 per group
  rejects.jsonl              only with --on-bad-record skip: the pairs left out, and why

1. Register the data in a Bagel checkout (github.com/ByteDance-Seed/Bagel):
   paste {dataset_info_py} at the end of data/dataset_info.py (it merges into DATASET_INFO).
   If this folder moved, edit the paths in it (data_dir, jsonl_path) and in {data_config}.

2. Download the checkpoint (Bagel's README): huggingface ByteDance-Seed/BAGEL-7B-MoT
   ("7B active, 14B total": the paper's Bagel-14B), e.g. to models/BAGEL-7B-MoT.

3. Fine-tune, from the root of the Bagel checkout (model_path=models/BAGEL-7B-MoT; one node of
   8 GPUs: num_nodes=1 node_rank=0 master_addr=127.0.0.1 master_port=29500):

{command}
Where each value comes from
  - 512 px generation (the paper): {data_config}, t2i_pretrain image_transform_args
    max_image_size = min_image_size = 512 (long side 512, sides multiples of 16).
  - 1:1 mixing (the paper): weight 1 for each group in {data_config}.
  - "Other hyperparameters are Bagel defaults" (the paper): Bagel's fine-tuning recipe in its
    TRAIN.md: --max_latent_size 64 (required to load the released weights), --lr 2e-5,
    --finetune_from_hf / --resume-model-only / --finetune-from-ema True, --num_workers 1, and
    its token budgets (--expected_num_tokens 10240, --max_num_tokens 11520,
    --max_num_tokens_per_sample 10240). Everything not on the command line keeps the default of
    train/pretrain_unified_navit.py: warmup_steps 2000, lr_scheduler constant, ema 0.9999,
    max_grad_norm 1.0, text_cond_dropout_prob 0.1, vae/vit_cond_dropout_prob 0.3,
    save_every 2000, use_flex False, visual_gen / visual_und True. The VLM image transform is
    Bagel's data/configs/example.yaml (stride 14, 378-980 px).
  - --total_steps: the paper gives none, and Bagel's default (500,000) is far more than this
    data: set $total_steps to your budget (and, for a short run, --warmup_steps below it).
    A step packs about 10,240 tokens per GPU; a 512 px T2I sample is 1,024 latent tokens plus
    its caption, a VLM sample up to 4,900 ViT tokens plus its text.
  - --nproc_per_node=8 and --num_workers 1: with {num_shards} T2I shards, GPUs x workers must
    divide the shard count (Bagel gives each rank and worker whole files and drops the rest).

Not verified here: nothing of this was run with Bagel (no GPU, no weights where it was written).
The formats were read from Bagel's code (data/t2i_dataset.py, data/vlm_dataset.py,
data/dataset_base.py, data/dataset_info.py, data/configs/example.yaml, TRAIN.md).
"""


def readme(root: str, opts: BagelExportOptions, count: int, num_shards: int) -> str:
    return README_TEMPLATE.format(
        root=root,
        count=count,
        num_shards=num_shards,
        name=opts.name,
        data_config=DATA_CONFIG,
        dataset_info_py=DATASET_INFO_PY,
        command=trainer_command(root),
    )


# --------------------------------------------------------------------------- small writers


def write_text(target: Path, text: str) -> None:
    with atomic_output(target) as temp:
        temp.write_text(text, encoding="utf-8")


def write_rejects(target: Path, skipped: Sequence[SkippedRecord]) -> Path | None:
    """One JSON line per pair left out (file, line/row, field, reason), as `pairs complete`
    lists its rejects; with nothing left out, a file from an earlier run is removed."""
    if not skipped:
        target.unlink(missing_ok=True)
        return None
    rows = [
        {
            "file": str(r.path),
            r.index_kind: r.index,
            "field": r.field,
            "reason": r.reason,
            "kind": "bad record",
        }
        for r in sorted(skipped, key=lambda r: (str(r.path), r.index))  # file order
    ]
    write_text(target, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return target


def _progress(items: Sequence[int], progress: bool | None, desc: str) -> Iterable[int]:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=None if progress is None else not progress)
