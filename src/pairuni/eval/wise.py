"""WISE: the prompt loader, the GPT-4o-style judge over an OpenAI-compatible API, and WiScore.

Follows PKU-YuanGroup/WISE (`gpt_eval.py`, `Calculate.py`, README):

- The judge sees the official system message and evaluation protocol (criteria for consistency,
  realism and aesthetic quality, each scored 0, 1 or 2), the prompt and its explanation, and the
  image as a PNG data URL; temperature 0, at most 2000 tokens.
- WiScore of an image = (0.7 * consistency + 0.2 * realism + 0.1 * aesthetic quality) / 2,
  in [0, 1].
- Categories by prompt_id: 1-400 cultural, 401-567 time, 568-700 space, 701-800 biology,
  801-900 physics, 901-1000 chemistry; a category's score is the mean WiScore of its images.
- Overall = 0.4 cultural + 0.167 time + 0.133 space + 0.1 (biology + physics + chemistry).

Departure: the official script records a failed or unparseable judgement as 999 for each score
(which would then enter the averages); here a reply without three valid 0-2 scores is retried,
and a judgement that still fails is left out of the averages and counted in `failed`.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import Field

from pairuni.configbase import Section
from pairuni.eval.layout import (
    data_error,
    not_found,
    read_json,
    read_jsonl,
    require_dir,
    require_field,
    require_str,
)
from pairuni.eval.results import BenchmarkResult, Column

logger = logging.getLogger(__name__)

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
"""The official overall weights: each category's share of the 1000 prompts."""
CATEGORY_HEADERS = ("Cultural", "Time", "Space", "Biology", "Physics", "Chemistry")
SCORE_KEYS = ("consistency", "realism", "aesthetic_quality")


def category_of(prompt_id: int) -> str | None:
    for name, low, high in CATEGORY_RANGES:
        if low <= prompt_id <= high:
            return name
    return None


@dataclass(frozen=True)
class WisePrompt:
    """One WISE prompt: the text to draw, the explanation given to the judge, and its category."""

    id: str
    prompt_id: int
    prompt: str
    explanation: str
    category: str
    subcategory: str


def load_wise(root: str | Path) -> list[WisePrompt]:
    """All prompts of the WISE JSON files in `root/data` (or `root`), sorted by prompt_id."""
    base = require_dir(root, "wise")
    files = sorted((base / "data").glob("*.json")) or sorted(base.glob("*.json"))
    if not files:
        raise not_found("wise", base, "no data/*.json prompt files")
    prompts: dict[int, WisePrompt] = {}
    for path in files:
        records = read_json(path)
        if not isinstance(records, list):
            raise data_error(path, "top level", "prompt_id", "is not in a JSON list", "")
        for index, record in enumerate(records):
            prompt = parse_record(record, path, f"item {index}")
            if prompt.prompt_id in prompts:
                raise data_error(
                    path, f"item {index}", "prompt_id", f"{prompt.prompt_id} repeats", ""
                )
            prompts[prompt.prompt_id] = prompt
    return [prompts[k] for k in sorted(prompts)]


def parse_record(record: Any, path: Path, where: str) -> WisePrompt:
    if not isinstance(record, dict):
        raise data_error(path, where, "prompt_id", "is missing (not an object)", "")
    prompt_id = require_field(record, "prompt_id", path, where)
    if not isinstance(prompt_id, int):
        raise data_error(path, where, "prompt_id", f"is {prompt_id!r}", "expected an integer")
    category = category_of(prompt_id)
    if category is None:
        raise data_error(path, where, "prompt_id", f"{prompt_id} is outside 1-1000", "")
    return WisePrompt(
        id=str(prompt_id),
        prompt_id=prompt_id,
        prompt=require_str(record, "Prompt", path, where),
        explanation=require_str(record, "Explanation", path, where),
        category=category,
        subcategory=str(record.get("Subcategory", "")),
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

# "Consistency: 2", "**Realism**: 1", "Aesthetic Quality：0" (a full-width colon also counts).
SCORE_RE = re.compile(
    r"\*{0,2}(Consistency|Realism|Aesthetic Quality)\*{0,2}\s*[:：]?\s*(\d)", re.IGNORECASE
)


def parse_scores(reply: str) -> dict[str, int] | None:
    """The three 0-2 scores in a judge reply, or None if any is missing or out of range.

    A JSON object with the three keys is read first; otherwise the official pattern
    `<Metric>: <digit>` is matched, and the last occurrence of a metric wins.
    """
    scores = parse_json_scores(reply)
    if scores is None:
        scores = {}
        for name, digit in SCORE_RE.findall(reply):
            scores[name.lower().replace(" ", "_")] = int(digit)
    if set(scores) != set(SCORE_KEYS) or not all(0 <= v <= 2 for v in scores.values()):
        return None
    return scores


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
    normalized = {str(k).lower().replace(" ", "_"): v for k, v in obj.items()}
    values = {k: normalized.get(k) for k in SCORE_KEYS}
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
        return None
    return values  # type: ignore[return-value]


def wiscore(consistency: float, realism: float, aesthetic_quality: float) -> float:
    """(0.7 consistency + 0.2 realism + 0.1 aesthetic quality) / 2, in [0, 1]."""
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

    max_retries: int = Field(5, ge=0)
    """Retries per image after a failed request or a reply without three valid scores."""

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
    """The judge's scores for one image (None when every attempt failed)."""

    prompt_id: int
    category: str
    consistency: int | None
    realism: int | None
    aesthetic_quality: int | None
    reply: str

    @property
    def failed(self) -> bool:
        return self.consistency is None

    @property
    def wiscore(self) -> float | None:
        if self.consistency is None or self.realism is None or self.aesthetic_quality is None:
            return None
        return wiscore(self.consistency, self.realism, self.aesthetic_quality)


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
        """Scores for one image; retries failed requests and unusable replies, and returns a
        failed judgement (scores None) when every attempt fails."""
        reply = ""
        delay = self.config.retry_delay_s
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.sleep(delay)
                delay *= 2
            try:
                reply = self.ask(prompt, image)
            except fatal_errors() as err:
                raise JudgeError(
                    f"the WISE judge at {self.config.base_url or 'the default OpenAI URL'} refused "
                    f"the request ({type(err).__name__}); check the API key in "
                    f"{self.config.api_key_env}, the model name {self.config.model!r} and the "
                    "base_url"
                ) from None
            except Exception as err:  # network errors, server errors, timeouts
                # Only the error's type and the prompt id: never the request (it holds the key
                # in its headers) nor the full error body.
                logger.warning(
                    "WISE judge: prompt %s attempt %d failed: %s",
                    prompt.prompt_id,
                    attempt + 1,
                    type(err).__name__,
                )
                reply = f"<request failed: {type(err).__name__}>"
                continue
            scores = parse_scores(reply)
            if scores is not None:
                return WiseJudgement(prompt.prompt_id, prompt.category, **scores, reply=reply)
            logger.warning(
                "WISE judge: prompt %s attempt %d: reply without three 0-2 scores",
                prompt.prompt_id,
                attempt + 1,
            )
        return WiseJudgement(prompt.prompt_id, prompt.category, None, None, None, reply)


def judge_images(
    prompts: Sequence[WisePrompt],
    images: Mapping[str, Image.Image | bytes],
    judge: WiseJudge,
    out_path: str | Path,
) -> list[WiseJudgement]:
    """Judge the image of every prompt, appending one JSON line per image to `out_path`.

    Prompts already judged successfully in `out_path` are skipped (an interrupted run resumes;
    failed ones are retried). `images` maps prompt id -> the generated image.
    """
    from tqdm import tqdm

    out = Path(out_path)
    done = {j.prompt_id: j for j in read_judgements(out) if not j.failed}
    out.parent.mkdir(parents=True, exist_ok=True)
    todo = [p for p in prompts if p.id in images]
    with out.open("a", encoding="utf-8") as handle:
        for prompt in tqdm(todo, desc="WISE judge", unit="image"):
            if prompt.prompt_id in done:
                continue
            verdict = judge.judge(prompt, images[prompt.id])
            done[prompt.prompt_id] = verdict
            handle.write(json.dumps(asdict(verdict)) + "\n")
            handle.flush()
    return [done[p.prompt_id] for p in todo if p.prompt_id in done]


def read_judgements(path: Path) -> Iterator[WiseJudgement]:
    if not path.is_file():
        return
    for number, obj in read_jsonl(path):
        try:
            yield WiseJudgement(**obj)
        except TypeError:
            raise data_error(
                path, f"line {number}", "prompt_id", "record is incomplete", "delete the line"
            ) from None


# --------------------------------------------------------------------------- scoring


def score_wise(judgements: Iterable[WiseJudgement]) -> BenchmarkResult:
    """Mean WiScore per category, the weighted overall (only when all six categories have
    images), and the mean of each raw score."""
    judgements = list(judgements)
    ok = [j for j in judgements if not j.failed]
    by_category: dict[str, list[float]] = defaultdict(list)
    for j in ok:
        by_category[j.category].append(j.wiscore or 0.0)
    metrics = {c: sum(v) / len(v) for c, v in by_category.items()}
    if all(c in by_category for c in CATEGORY_WEIGHTS):
        metrics["overall"] = sum(w * metrics[c] for c, w in CATEGORY_WEIGHTS.items())
    for key in SCORE_KEYS:
        if ok:
            metrics[f"mean/{key}"] = sum(getattr(j, key) for j in ok) / len(ok)
    columns = [
        Column(h, c, digits=2) for h, c in zip(CATEGORY_HEADERS, CATEGORY_WEIGHTS, strict=True)
    ]
    return BenchmarkResult(
        "WISE",
        metrics,
        [*columns, Column("Overall", "overall", digits=2)],
        {"num_images": len(judgements), "failed": len(judgements) - len(ok)},
    )
