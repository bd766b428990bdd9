"""WISE: the prompt sets, the GPT-4o-style judge over an OpenAI-compatible API, and WiScore.

Follows PKU-YuanGroup/WISE as of its snapshot eb51174 (2026-04-25). Each rule below names the
official commit it reproduces:

- Prompt sets (`PROMPT_SETS`): the original prompts `data/<stem>.json` and their simplified
  rewrites `data/<stem>_rewrite.json` (both 5e5e134, 2025-03-10; moved to `WISE_legacy/data/`
  by d6bfe42, 2026-04-19), and the WISE_Verified prompts `data_verified/<stem>_verified.json`
  (d6bfe42), whose ids 401-1000 mean other prompts and other categories. One set is loaded at a
  time, chosen by name; rewrite and verified ids get a prefix so that they never collide with
  the original ids (images and judgements are cached by id).
- The judge sees the official system message and evaluation protocol of `gpt_eval.py`
  (consistency, realism and aesthetic quality, each to be scored 0, 1 or 2), the prompt and its
  explanation, and the image as a PNG data URL; temperature 0, at most 2000 tokens.
- Scores are read as `gpt_eval.py` of 5663144 (2026-04-08) reads them: `<Metric>: <digit>`,
  any digit 0-9 (scores outside the rubric's 0-2 are kept), the last occurrence wins; a reply
  naming no metric may instead be three lines holding a bare 0, 1 or 2.
- A reply without all three scores is asked again (3 attempts, as 5663144) and then left out
  of the averages; `missing_scores: zero` keeps the 2025-06-03 rule instead (dd0b900: a missing
  metric is recorded as 0 and averaged).
- WiScore of an image = (0.7 consistency + 0.2 realism + 0.1 aesthetic quality) / 2
  (`Calculate.py`, 76b1dce, 2025-06-03). A category's score is the mean WiScore of its images;
  Overall weighs the categories by their share of the 1000 prompts (0.4 / 0.167 / 0.133 /
  0.1 x 3 for the original prompts, 0.4 / 0.12 x 5 in `calculate_verified.py` of d6bfe42).

Departures (each only where the official code gives no number):
- A reply the official pattern cannot read completely is read once more leniently: a colon
  inside the bold (`**Consistency:** 1`), a full-width colon (`：`, accepted by the first
  release 9903c0b and lost in 5d2a340) or a JSON object with the three keys.
- The official `Calculate.py --category all` prints nothing unless all 1000 prompts are
  judged; here Overall is always computed from the categories present (their official weights
  renormalised to sum to 1), and `details` says whether it is the official number.
- The verified prompts are judged with the original three-score protocol above: WISE_Verified's
  own binary judge (`vllm_eval.py`, Qwen3.5-35B-A3B) is not implemented, so those numbers
  compare with neither leaderboard.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import Field

from pairuni.configbase import Section
from pairuni.eval.layout import (
    BenchmarkNotFoundError,
    data_error,
    read_json,
    read_jsonl,
    require_field,
    require_str,
)
from pairuni.eval.results import BenchmarkResult, Column

logger = logging.getLogger(__name__)

SCORE_KEYS = ("consistency", "realism", "aesthetic_quality")
CATEGORY_HEADERS = ("Cultural", "Time", "Space", "Biology", "Physics", "Chemistry")
CATEGORIES = ("CULTURE", "TIME", "SPACE", "BIOLOGY", "PHYSICS", "CHEMISTRY")
STEMS = ("cultural_common_sense", "spatio-temporal_reasoning", "natural_science")
"""The three official prompt files of every set, by the part of their name they share."""

# --------------------------------------------------------------------------- prompt sets

PromptSetName = Literal["original", "rewrite", "verified"]


@dataclass(frozen=True)
class PromptSet:
    """One published set of WISE prompts: where its files are, how ids map to categories, the
    Overall weights, and the prefix that keeps its ids apart from the other sets'."""

    name: str
    files: tuple[str, ...]
    merged: str | None
    folders: tuple[str, ...]
    ranges: tuple[tuple[str, int, int], ...]
    weights: Mapping[str, float]
    id_prefix: str

    def category_of(self, prompt_id: int) -> str | None:
        for name, low, high in self.ranges:
            if low <= prompt_id <= high:
                return name
        return None

    def sample_id(self, prompt_id: int) -> str:
        return f"{self.id_prefix}{prompt_id}"


# Calculate.py (76b1dce, 2025-06-03): categories by prompt_id and the Overall weights, each
# category's share of the 1000 prompts.
CATEGORY_RANGES: tuple[tuple[str, int, int], ...] = (
    ("CULTURE", 1, 400),
    ("TIME", 401, 567),
    ("SPACE", 568, 700),
    ("BIOLOGY", 701, 800),
    ("PHYSICS", 801, 900),
    ("CHEMISTRY", 901, 1000),
)
CATEGORY_WEIGHTS = {
    "CULTURE": 0.4,
    "TIME": 0.167,
    "SPACE": 0.133,
    "BIOLOGY": 0.1,
    "PHYSICS": 0.1,
    "CHEMISTRY": 0.1,
}
"""The official Overall weights of the original (and rewrite) prompts."""

# calculate_verified.py (d6bfe42, 2026-04-19): 120 prompts in each non-cultural category.
VERIFIED_RANGES: tuple[tuple[str, int, int], ...] = (
    ("CULTURE", 1, 400),
    ("TIME", 401, 520),
    ("SPACE", 521, 640),
    ("BIOLOGY", 641, 760),
    ("PHYSICS", 761, 880),
    ("CHEMISTRY", 881, 1000),
)
VERIFIED_WEIGHTS = {"CULTURE": 0.4, **{c: 0.12 for c in CATEGORIES[1:]}}

# Folders tried under the WISE folder, in order: the current release's, then the layout before
# 2026-04-19 (and this project's earlier docs), then the folder itself.
LEGACY_FOLDERS = ("WISE_legacy/data", "data", ".")
PROMPT_SETS: dict[str, PromptSet] = {
    "original": PromptSet(
        name="original",
        files=tuple(f"{s}.json" for s in STEMS),
        merged=None,
        folders=LEGACY_FOLDERS,
        ranges=CATEGORY_RANGES,
        weights=CATEGORY_WEIGHTS,
        id_prefix="",
    ),
    "rewrite": PromptSet(
        name="rewrite",
        files=tuple(f"{s}_rewrite.json" for s in STEMS),
        merged=None,
        folders=LEGACY_FOLDERS,
        ranges=CATEGORY_RANGES,
        weights=CATEGORY_WEIGHTS,
        id_prefix="rewrite-",
    ),
    "verified": PromptSet(
        name="verified",
        files=tuple(f"{s}_verified.json" for s in STEMS),
        merged="merge.json",
        folders=("data_verified", "."),
        ranges=VERIFIED_RANGES,
        weights=VERIFIED_WEIGHTS,
        id_prefix="verified-",
    ),
}
"""The prompt sets by name. `original` is the one the WISE paper (and its GPT-4o leaderboard)
scores; its ids stay the bare prompt_id so that images and judgements cached before prompt sets
existed keep their meaning."""


def prompt_set(name: str) -> PromptSet:
    if name not in PROMPT_SETS:
        raise ValueError(
            f"unknown WISE prompt set {name!r}; valid: {', '.join(PROMPT_SETS)} (original is the "
            "paper's)"
        )
    return PROMPT_SETS[name]


def category_of(prompt_id: int, set_name: str = "original") -> str | None:
    """The category of a prompt id in a prompt set, or None outside 1-1000."""
    return prompt_set(set_name).category_of(prompt_id)


@dataclass(frozen=True)
class WisePrompt:
    """One WISE prompt: the text to draw, the explanation given to the judge, its category, and
    the set it comes from. `id` is unique across sets (`prompt_id` is not)."""

    id: str
    prompt_id: int
    prompt: str
    explanation: str
    category: str
    subcategory: str
    prompt_set: str = "original"


# --------------------------------------------------------------------------- the loader

DOWNLOAD = "https://github.com/PKU-YuanGroup/WISE"


def load_wise(root: str | Path, set_name: str = "original") -> list[WisePrompt]:
    """The prompts of one set (`original`, `rewrite` or `verified`) under `root`, sorted by
    prompt_id.

    `root` may be a clone of the WISE repository (either layout) or the folder holding the
    set's JSON files. Only the set's own files are read, so rewrites never mix with the
    originals; a folder whose files belong to another set, or two folders that both hold the
    set, is refused with a message that says what to pass.
    """
    pset = prompt_set(set_name)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise wise_not_found(base, "the WISE directory does not exist")
    folder = find_set_folder(base, pset)
    prompts: dict[int, tuple[WisePrompt, Path]] = {}
    for path in set_files(folder, pset):
        for prompt, where in read_prompt_file(path, pset):
            if prompt.prompt_id in prompts:
                first = prompts[prompt.prompt_id][1]
                raise data_error(
                    path,
                    where,
                    "prompt_id",
                    f"{prompt.prompt_id} repeats (also in {first})",
                    "use the release's files unchanged: each prompt_id once per set",
                )
            prompts[prompt.prompt_id] = (prompt, path)
    if pset.name == "verified":
        logger.warning(
            "WISE verified prompts are judged with the original three-score protocol; the "
            "WISE_Verified binary judge is not implemented, so the scores compare with neither "
            "leaderboard"
        )
    return [prompts[k][0] for k in sorted(prompts)]


def find_set_folder(base: Path, pset: PromptSet) -> Path:
    """The one folder under `base` that holds files of `pset`."""
    holding = [f for f in candidate_folders(base, pset.folders) if holds(f, pset)]
    if len(holding) > 1:
        shown = " and ".join(str(f) for f in holding)
        raise wise_not_found(
            base,
            f"both {shown} hold WISE {pset.name} prompt files; set eval.wise_dir to the one "
            "you mean",
        )
    if not holding:
        raise wise_not_found(base, missing_set_problem(base, pset))
    return holding[0]


def candidate_folders(base: Path, names: Sequence[str]) -> list[Path]:
    folders = [base / name if name != "." else base for name in names]
    return [f for f in folders if f.is_dir()]


def holds(folder: Path, pset: PromptSet) -> bool:
    names = [*pset.files, *([pset.merged] if pset.merged else [])]
    return any((folder / name).is_file() for name in names)


def missing_set_problem(base: Path, pset: PromptSet) -> str:
    """Why `base` has no files of `pset`, naming the set (and folder) it does hold, if any."""
    expected = ", ".join(pset.files)
    for other in PROMPT_SETS.values():
        found = [f for f in candidate_folders(base, other.folders) if holds(f, other)]
        if other is not pset and found:
            return (
                f"no {pset.name} prompt files ({expected}), but {found[0]} holds the "
                f"{other.name} set; set eval.wise_set: {other.name} to score that set, or point "
                f"eval.wise_dir at a folder holding {expected}"
            )
    strays = sorted(
        str(path)
        for folder in candidate_folders(base, pset.folders)
        for path in folder.glob("*.json")
        if not any(path.name in (*s.files, s.merged) for s in PROMPT_SETS.values())
    )
    if strays:
        return (
            f"no {pset.name} prompt files ({expected}); found {', '.join(strays)}, not named "
            "as the release names its files: use the release's files under their own names"
        )
    return f"no {pset.name} prompt files ({expected})"


def set_files(folder: Path, pset: PromptSet) -> list[Path]:
    """The set's files in `folder`: its per-category files, or its merged copy when none of
    them is there (data_verified/merge.json repeats the three files, so it is never added to
    them)."""
    present = [folder / name for name in pset.files if (folder / name).is_file()]
    if not present and pset.merged:
        return [folder / pset.merged]
    absent = [name for name in pset.files if not (folder / name).is_file()]
    if absent:
        logger.warning(
            "WISE %s prompts: %s has no %s; only the prompts of the other files are loaded",
            pset.name,
            folder,
            ", ".join(absent),
        )
    return present


def read_prompt_file(path: Path, pset: PromptSet) -> Iterator[tuple[WisePrompt, str]]:
    records = read_json(path)
    if not isinstance(records, list):
        raise data_error(
            path, "top level", "prompt_id", "is not in a JSON list", "re-download the file"
        )
    for index, record in enumerate(records):
        where = f"item {index}"
        yield parse_record(record, path, where, pset), where


def parse_record(
    record: Any, path: Path, where: str, pset: PromptSet = PROMPT_SETS["original"]
) -> WisePrompt:
    if not isinstance(record, dict):
        raise data_error(
            path, where, "prompt_id", "is missing (not an object)", "re-download the file"
        )
    prompt_id = require_field(record, "prompt_id", path, where)
    if not isinstance(prompt_id, int) or isinstance(prompt_id, bool):
        raise data_error(
            path, where, "prompt_id", f"is {prompt_id!r}", "expected an integer 1-1000"
        )
    category = pset.category_of(prompt_id)
    if category is None:
        raise data_error(
            path, where, "prompt_id", f"{prompt_id} is outside 1-1000", "use the release's files"
        )
    return WisePrompt(
        id=pset.sample_id(prompt_id),
        prompt_id=prompt_id,
        prompt=require_str(record, "Prompt", path, where),
        explanation=require_str(record, "Explanation", path, where),
        category=category,
        subcategory=str(record.get("Subcategory", "")),
        prompt_set=pset.name,
    )


def wise_not_found(root: Path, problem: str) -> BenchmarkNotFoundError:
    return BenchmarkNotFoundError(
        f"WISE: {problem} (looked in {root}). Benchmark data does not ship with pairuni: clone "
        f"{DOWNLOAD} and set eval.wise_dir to the clone (or to the folder holding the set's "
        "files). Original and rewrite prompts: WISE_legacy/data/ (data/ before 2026-04-19), "
        "<stem>.json and <stem>_rewrite.json; verified prompts: data_verified/<stem>_verified"
        ".json; stems cultural_common_sense, spatio-temporal_reasoning, natural_science. "
        "See docs/eval.md."
    )


# --------------------------------------------------------------------------- the judge prompt

SYSTEM_MESSAGE = (
    "You are a professional Vincennes image quality audit expert, please evaluate the image "
    "quality strictly according to the protocol."
)

# The evaluation protocol of the official gpt_eval.py. Its wording is part of the metric (the
# judge's scores depend on it), so it is kept as published; only the layout of this constant
# (and trailing spaces at three line ends) differ.
PROTOCOL = """Please evaluate strictly and return ONLY the three scores as requested.

# Text-to-Image Quality Evaluation Protocol

## System Instruction
You are an AI quality auditor for text-to-image generation. Apply these rules with ABSOLUTE \
RUTHLESSNESS. Only images meeting the HIGHEST standards should receive top scores.

**Input Parameters**
- PROMPT: [User's original prompt to]
- EXPLANATION: [Further explanation of the original prompt]
---

## Scoring Criteria

**Consistency (0-2):**  How accurately and completely the image reflects the PROMPT.
* **0 (Rejected):**  Fails to capture key elements of the prompt, or contradicts the prompt.
* **1 (Conditional):** Partially captures the prompt. Some elements are present, but not all, or \
not accurately.  Noticeable deviations from the prompt's intent.
* **2 (Exemplary):**  Perfectly and completely aligns with the PROMPT.  Every single element and \
nuance of the prompt is flawlessly represented in the image. The image is an ideal, unambiguous \
visual realization of the given prompt.

**Realism (0-2):**  How realistically the image is rendered.
* **0 (Rejected):**  Physically implausible and clearly artificial. Breaks fundamental laws of \
physics or visual realism.
* **1 (Conditional):** Contains minor inconsistencies or unrealistic elements.  While somewhat \
believable, noticeable flaws detract from realism.
* **2 (Exemplary):**  Achieves photorealistic quality, indistinguishable from a real photograph.  \
Flawless adherence to physical laws, accurate material representation, and coherent spatial \
relationships. No visual cues betraying AI generation.

**Aesthetic Quality (0-2):**  The overall artistic appeal and visual quality of the image.
* **0 (Rejected):**  Poor aesthetic composition, visually unappealing, and lacks artistic merit.
* **1 (Conditional):**  Demonstrates basic visual appeal, acceptable composition, and color \
harmony, but lacks distinction or artistic flair.
* **2 (Exemplary):**  Possesses exceptional aesthetic quality, comparable to a masterpiece.  \
Strikingly beautiful, with perfect composition, a harmonious color palette, and a captivating \
artistic style. Demonstrates a high degree of artistic vision and execution.

---

## Output Format

**Do not include any other text, explanations, or labels.** You must return only three lines of \
text, each containing a metric and the corresponding score, for example:

**Example Output:**
Consistency: 2
Realism: 1
Aesthetic Quality: 0

---

**IMPORTANT Enforcement:**

Be EXTREMELY strict in your evaluation. A score of '2' should be exceedingly rare and reserved \
only for images that truly excel and meet the highest possible standards in each metric. If there \
is any doubt, downgrade the score.

For **Consistency**, a score of '2' requires complete and flawless adherence to every aspect of \
the prompt, leaving no room for misinterpretation or omission.

For **Realism**, a score of '2' means the image is virtually indistinguishable from a real \
photograph in terms of detail, lighting, physics, and material properties.

For **Aesthetic Quality**, a score of '2' demands exceptional artistic merit, not just pleasant \
visuals.

---
Here are the Prompt and EXPLANATION for this evaluation:
PROMPT: "{prompt}"
EXPLANATION: "{explanation}"
Please strictly adhere to the scoring criteria and follow the template format when providing \
your results."""


def png_data_url(image: Image.Image | bytes) -> str:
    """The image as a `data:image/png;base64,...` URL (bytes are sent as they are)."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        image = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(image).decode("ascii")


def build_messages(prompt: WisePrompt, image: Image.Image | bytes) -> list[dict[str, Any]]:
    """The official chat: a system message, then the protocol text and the image."""
    # str.replace, not str.format: prompts may contain braces.
    text = PROTOCOL.replace("{prompt}", prompt.prompt).replace("{explanation}", prompt.explanation)
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": png_data_url(image)}},
            ],
        },
    ]


# --------------------------------------------------------------------------- parsing replies

# gpt_eval.py of 5663144 (2026-04-08; unchanged in WISE_legacy/ since d6bfe42): the metric name
# in up to two asterisks, an optional ASCII colon (the official class `[::]` holds it twice),
# then ONE digit. `\d` takes any digit, so scores outside the rubric's 0-2 are kept, and
# "Consistency: 10" reads as 1. A colon inside the bold ("**Consistency:** 1") does not match.
OFFICIAL_SCORE_RE = re.compile(
    r"\*{0,2}(Consistency|Realism|Aesthetic Quality)\*{0,2}\s*:?\s*(\d)", re.IGNORECASE
)
# 5663144's fallback for a reply that names no metric: lines holding only a 0, 1 or 2; the first
# three are consistency, realism and aesthetic quality.
BARE_SCORE_LINE_RE = re.compile(r"^\s*([0-2])\s*$", re.MULTILINE)
# Our departure, tried only on replies the official rules cannot read completely: asterisks
# and blanks on either side of the colon, and a full-width colon.
LENIENT_SCORE_RE = re.compile(
    r"\*{0,2}(Consistency|Realism|Aesthetic[ _]?Quality)\s*\*{0,2}\s*[:：]?\s*\*{0,2}\s*(\d)",
    re.IGNORECASE,
)


def score_key(name: str) -> str:
    """`Aesthetic Quality` (any case, space or underscore) -> `aesthetic_quality`."""
    letters = re.sub(r"[^a-z]", "", name.lower())
    return "aesthetic_quality" if letters == "aestheticquality" else letters


def named_scores(reply: str, pattern: re.Pattern[str]) -> dict[str, int]:
    """Every `<Metric> <digit>` match; a metric named twice keeps its last score (the official
    dict is overwritten in reply order)."""
    return {score_key(name): int(digit) for name, digit in pattern.findall(reply)}


def official_scores(reply: str, bare_numbers: bool = True) -> dict[str, int]:
    """The scores the official `extract_scores` finds (possibly not all three).

    `bare_numbers=True` is 5663144 (2026-04-08 onwards); `False` is dd0b900 (2025-06-03), which
    had no fallback for bare numbers.
    """
    scores = named_scores(reply, OFFICIAL_SCORE_RE)
    if scores or not bare_numbers:
        return scores  # any named metric rules the fallback out, as officially
    numbers = BARE_SCORE_LINE_RE.findall(reply)
    return dict(zip(SCORE_KEYS, map(int, numbers), strict=False)) if len(numbers) >= 3 else {}


def lenient_scores(reply: str) -> dict[str, int] | None:
    """Our reading of a reply the official rules cannot score: the lenient pattern, else a JSON
    object with the three keys; None if neither gives all three."""
    scores = named_scores(reply, LENIENT_SCORE_RE)
    if set(scores) == set(SCORE_KEYS):
        return scores
    return parse_json_scores(reply)


def parse_scores(reply: str) -> dict[str, int] | None:
    """The three scores of a judge reply, or None when they cannot all be read.

    The official rules (5663144) come first, so every reply they read completely gets their
    numbers; only the others are read leniently (`lenient_scores`). Scores are digits 0-9, as
    officially: values above the rubric's 2 are kept.
    """
    scores = official_scores(reply)
    if set(scores) == set(SCORE_KEYS):
        return scores
    return lenient_scores(reply)


def parse_json_scores(reply: str) -> dict[str, int] | None:
    match = re.search(r"\{.*\}", reply, re.S)
    if not match:
        return None
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    normalized = {score_key(str(k)): v for k, v in obj.items()}
    values = {k: normalized.get(k) for k in SCORE_KEYS}
    # A single digit, like the official `\d`: 0-9, not a bool.
    if not all(type(v) is int and 0 <= v <= 9 for v in values.values()):
        return None
    return values  # type: ignore[return-value]


def wiscore(consistency: float, realism: float, aesthetic_quality: float) -> float:
    """(0.7 consistency + 0.2 realism + 0.1 aesthetic quality) / 2: in [0, 1] for rubric scores,
    above 1 for the out-of-rubric ones the official parser keeps."""
    return (0.7 * consistency + 0.2 * realism + 0.1 * aesthetic_quality) / 2


# --------------------------------------------------------------------------- the judge client


class JudgeConfig(Section):
    """The WISE judge: any OpenAI-compatible chat-completions endpoint that accepts images."""

    base_url: str | None = None
    """API base URL, e.g. `https://api.openai.com/v1` or a local vLLM server's
    `http://127.0.0.1:8000/v1`. `null` uses the openai client's default (OPENAI_BASE_URL or
    api.openai.com)."""

    model: str = "gpt-4o-2024-05-13"
    """Judge model name. WISE's published scores use gpt-4o-2024-05-13; another judge gives
    numbers that are not comparable with them."""

    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable that holds the API key (the key itself never goes in a
    config file and is never logged)."""

    max_retries: int = Field(2, ge=0)
    """Retries per image after a failed request or a reply without three scores (2: three
    attempts in all, as the official gpt_eval.py since 2026-04-08). An image still without
    scores is left out of the averages and asked again by the next run."""

    missing_scores: Literal["retry", "zero"] = "retry"
    """What a judge reply lacking a score counts as. `retry`: the official rule since
    2026-04-08 (WISE commit 5663144): the image is asked again (`max_retries`), then left out.
    `zero`: the official rule of 2025-06-03 to 2026-04-07 (commit dd0b900), to compare with
    numbers from that period: the first reply is kept, a metric it lacks is recorded as 0 and
    averaged, and only that version's pattern `Metric: digit` is read (no bare-number lines,
    no lenient reading)."""

    retry_delay_s: float = Field(2.0, ge=0.0)
    """Seconds before the first retry; doubles at each further retry."""

    timeout_s: float = Field(120.0, gt=0.0)
    """Timeout of one request, in seconds."""

    temperature: float = Field(0.0, ge=0.0)
    """Sampling temperature of the judge (0 as in the official script)."""

    max_tokens: int = Field(2000, ge=1)
    """Most tokens the judge may reply with (2000 as in the official script)."""


class JudgeError(RuntimeError):
    """The judge refused a request in a way no retry can fix (bad key, model or URL)."""


def fatal_errors() -> tuple[type[Exception], ...]:
    from openai import AuthenticationError, NotFoundError, PermissionDeniedError

    return (AuthenticationError, PermissionDeniedError, NotFoundError)


@dataclass(frozen=True)
class WiseJudgement:
    """The judge's scores for one image (None when every attempt failed).

    `filled` names the metrics recorded as 0 because the reply lacked them
    (`missing_scores: zero` only).
    """

    prompt_id: int
    category: str
    consistency: int | None
    realism: int | None
    aesthetic_quality: int | None
    reply: str
    prompt_set: str = "original"
    filled: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.consistency is None

    @property
    def key(self) -> tuple[str, int]:
        """Unique across prompt sets (prompt_id alone is not)."""
        return (self.prompt_set, self.prompt_id)

    @property
    def out_of_rubric(self) -> bool:
        return any(getattr(self, k) is not None and getattr(self, k) > 2 for k in SCORE_KEYS)

    @property
    def wiscore(self) -> float | None:
        if self.consistency is None or self.realism is None or self.aesthetic_quality is None:
            return None
        return wiscore(self.consistency, self.realism, self.aesthetic_quality)


def prompt_key(prompt: WisePrompt) -> tuple[str, int]:
    return (prompt.prompt_set, prompt.prompt_id)


class WiseJudge:
    """Scores images with the WISE protocol through the `openai` client, with retries."""

    def __init__(
        self, config: JudgeConfig | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        from openai import OpenAI

        self.config = config or JudgeConfig()
        key = os.environ.get(self.config.api_key_env)
        if not key:
            raise RuntimeError(
                f"the WISE judge needs an API key in the environment variable "
                f"{self.config.api_key_env}; export it (or set judge.api_key_env to the variable "
                "that holds it)"
            )
        # Retries are ours (they also cover unparseable replies), so the client's are off.
        self.client = OpenAI(
            base_url=self.config.base_url,
            api_key=key,
            max_retries=0,
            timeout=self.config.timeout_s,
        )
        self.sleep = sleep

    def ask(self, prompt: WisePrompt, image: Image.Image | bytes) -> str:
        """One request; returns the judge's reply text."""
        response = self.client.chat.completions.create(
            model=self.config.model,
            messages=build_messages(prompt, image),  # type: ignore[arg-type]
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
        )
        return response.choices[0].message.content or ""

    def judge(self, prompt: WisePrompt, image: Image.Image | bytes) -> WiseJudgement:
        """Scores for one image; retries failed requests (and, under `missing_scores: retry`,
        replies without three scores), and returns a failed judgement (scores None) when every
        attempt fails."""
        reply = ""
        delay = self.config.retry_delay_s
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.sleep(delay)
                delay *= 2
            reply, answered = self.request(prompt, image, attempt)
            if not answered:
                continue
            if self.config.missing_scores == "zero":
                return zero_filled(prompt, reply)
            scores = parse_scores(reply)
            if scores is not None:
                return judged(prompt, scores, reply)
            logger.warning(
                "WISE judge: prompt %s attempt %d: reply without three scores",
                prompt.id,
                attempt + 1,
            )
        return WiseJudgement(
            prompt.prompt_id, prompt.category, None, None, None, reply, prompt.prompt_set
        )

    def request(
        self, prompt: WisePrompt, image: Image.Image | bytes, attempt: int
    ) -> tuple[str, bool]:
        """(the reply, True), or (a note naming the error, False) after a request error worth
        retrying."""
        try:
            return self.ask(prompt, image), True
        except fatal_errors() as err:
            raise JudgeError(
                f"the WISE judge at {self.config.base_url or 'the default OpenAI URL'} refused "
                f"the request ({type(err).__name__}); check the API key in "
                f"{self.config.api_key_env}, the model name {self.config.model!r} and the "
                "base_url"
            ) from None
        except Exception as err:  # network errors, server errors, timeouts
            # Only the error's type and the prompt id: never the request (it holds the key in
            # its headers) nor the full error body.
            logger.warning(
                "WISE judge: prompt %s attempt %d failed: %s",
                prompt.id,
                attempt + 1,
                type(err).__name__,
            )
            return f"<request failed: {type(err).__name__}>", False


def judged(prompt: WisePrompt, scores: Mapping[str, int], reply: str) -> WiseJudgement:
    verdict = WiseJudgement(
        prompt.prompt_id, prompt.category, **scores, reply=reply, prompt_set=prompt.prompt_set
    )
    if verdict.out_of_rubric:
        logger.warning(
            "WISE judge: prompt %s: a score above 2 (%s), kept as the official parser keeps it",
            prompt.id,
            ", ".join(f"{k} {scores[k]}" for k in SCORE_KEYS),
        )
    return verdict


def zero_filled(prompt: WisePrompt, reply: str) -> WiseJudgement:
    """dd0b900 (2025-06-03): `scores.get(metric, 0)` on that version's parse, no retry."""
    scores = official_scores(reply, bare_numbers=False)
    filled = tuple(k for k in SCORE_KEYS if k not in scores)
    verdict = judged(prompt, {k: scores.get(k, 0) for k in SCORE_KEYS}, reply)
    return replace(verdict, filled=filled)


def judge_images(
    prompts: Sequence[WisePrompt],
    images: Mapping[str, Image.Image | bytes],
    judge: WiseJudge,
    out_path: str | Path,
) -> list[WiseJudgement]:
    """Judge the image of every prompt, appending one JSON line per image to `out_path`.

    Prompts already judged successfully in `out_path` are skipped (an interrupted run resumes;
    failed ones are retried, as the official script does on a rerun). `images` maps prompt id
    -> the generated image. Judgements are keyed by (prompt set, prompt_id), so a file shared by
    runs over different sets never reuses one set's verdict for another's prompt.
    """
    from tqdm import tqdm

    out = Path(out_path)
    done = {j.key: j for j in read_judgements(out) if not j.failed}
    out.parent.mkdir(parents=True, exist_ok=True)
    todo = [p for p in prompts if p.id in images]
    with out.open("a", encoding="utf-8") as handle:
        for prompt in tqdm(todo, desc="WISE judge", unit="image"):
            if prompt_key(prompt) in done:
                continue
            verdict = judge.judge(prompt, images[prompt.id])
            done[prompt_key(prompt)] = verdict
            handle.write(json.dumps(asdict(verdict)) + "\n")
            handle.flush()
    return [done[prompt_key(p)] for p in todo if prompt_key(p) in done]


def read_judgements(path: Path) -> Iterator[WiseJudgement]:
    if not path.is_file():
        return
    for number, obj in read_jsonl(path):
        verdict = judgement_record(obj)
        if verdict is None:
            raise data_error(
                path,
                f"line {number}",
                "prompt_id",
                "is not a WISE judgement record",
                "delete the line (the image is judged again)",
            )
        yield verdict


def judgement_record(obj: Any) -> WiseJudgement | None:
    """A judgements.jsonl line as a judgement (lines written before prompt sets existed lack
    `prompt_set` and `filled`, and take their defaults), or None if it is not one."""
    if not isinstance(obj, dict):
        return None
    try:
        return WiseJudgement(**{**obj, "filled": tuple(obj.get("filled", ()))})
    except TypeError:
        return None


# --------------------------------------------------------------------------- scoring


def score_wise(judgements: Iterable[WiseJudgement]) -> BenchmarkResult:
    """Mean WiScore per category, Overall, and the mean of each raw score.

    Overall is the official weighted sum when all six categories have judged images; with some
    categories absent (a partial run) it renormalises their official weights over the ones
    present, where the official Calculate.py prints no Overall. `details["official_overall"]` is
    True only when every prompt of the set is judged: then Overall is the official number.
    """
    judgements = list(judgements)
    pset = judged_set(judgements)
    ok = [j for j in judgements if not j.failed]
    by_category: dict[str, list[float]] = defaultdict(list)
    for j in ok:
        by_category[j.category].append(j.wiscore or 0.0)
    metrics = {c: sum(by_category[c]) / len(by_category[c]) for c in CATEGORIES if by_category[c]}
    overall = weighted_overall(metrics, pset.weights)
    if overall is not None:
        metrics["overall"] = overall
    for key in SCORE_KEYS:
        if ok:
            metrics[f"mean/{key}"] = sum(getattr(j, key) for j in ok) / len(ok)
    columns = [Column(h, c, digits=2) for h, c in zip(CATEGORY_HEADERS, CATEGORIES, strict=True)]
    return BenchmarkResult(
        "WISE",
        metrics,
        [*columns, Column("Overall", "overall", digits=2)],
        score_details(judgements, ok, pset),
    )


def judged_set(judgements: Sequence[WiseJudgement]) -> PromptSet:
    names = sorted({j.prompt_set for j in judgements})
    if len(names) > 1:
        raise ValueError(
            f"WISE: the judgements mix the prompt sets {', '.join(names)}, whose ids and weights "
            "differ; score each set on its own"
        )
    return prompt_set(names[0] if names else "original")


def weighted_overall(means: Mapping[str, float], weights: Mapping[str, float]) -> float | None:
    present = [c for c in CATEGORIES if c in means]
    if not present:
        return None
    total = sum(weights[c] * means[c] for c in present)
    if len(present) == len(CATEGORIES):
        return total  # the official sum, not divided by its float weight total
    return total / sum(weights[c] for c in present)


def score_details(
    judgements: Sequence[WiseJudgement], ok: Sequence[WiseJudgement], pset: PromptSet
) -> dict[str, Any]:
    judged_ids = {j.prompt_id for j in ok}
    expected = {i for _, low, high in pset.ranges for i in range(low, high + 1)}
    missing = len(expected - judged_ids)
    return {
        "num_images": len(judgements),
        "failed": len(judgements) - len(ok),
        "prompt_set": pset.name,
        "per_category": {c: sum(j.category == c for j in ok) for c in CATEGORIES},
        "missing_prompts": missing,
        "official_overall": missing == 0,
        "out_of_rubric": sum(j.out_of_rubric for j in ok),
        "zero_filled": sum(bool(j.filled) for j in ok),
    }
