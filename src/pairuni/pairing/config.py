"""The `pairing` section: how the PairUG file is built from single-task data.

Sources -> cross-modal completion -> image features -> k-means medoids (aligned pairs) ->
thresholded greedy retrieval (retrieved pairs). The defaults are the paper's (arXiv 2510.25682
§2.1, Algorithm 1): ResNet-50 features, delta = 0.6, one neighbour per generation sample.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pairuni.configbase import Section


class SourcesConfig(Section):
    """Where the single-task data comes from and how its columns are named."""

    understanding: list[str] = Field(default_factory=list)
    """Understanding datasets (image, question, options, answer, category): JSONL or parquet
    files, HF `datasets` directories (`save_to_disk` output or a folder of parquet shards), or
    image folders with a `metadata.jsonl` / `metadata.csv` / `metadata.parquet` file."""

    generation: list[str] = Field(default_factory=list)
    """Generation datasets (prompt, image), in the same formats as `understanding`."""

    columns: dict[str, str] = Field(default_factory=dict)
    """Column mapping from the schema's field name to the column of the source, e.g.
    `{question: problem, answer: solution, image: img_path}`. Unmapped fields are read from the
    column of the same name."""

    drop_categories: list[str] = Field(default_factory=lambda: ["detection", "grounding"])
    """Understanding categories to drop (matched case-insensitively, also as a substring of the
    category, so `grounding` drops `visual_grounding`). The paper drops detection and grounding
    because Janus-Pro fails on them."""

    keep_categories: list[str] | None = None
    """If set, keep only records whose category is in this list (case-insensitive exact match);
    applied after `drop_categories`."""

    dedup: bool = True
    """Drop exact duplicates within a task: records with the same image content (sha256 of the
    image bytes) and the same question and options (understanding) or prompt (generation),
    whitespace aside; the first occurrence wins. Other questions about the same image are
    kept."""

    on_bad_record: Literal["error", "skip"] = "error"
    """What to do with a bad record (invalid JSON, not fitting the schema, a missing or corrupt
    image, a repeated id): `error` stops with the file, line/row and field; `skip` leaves it out,
    counts it in the summary and lists it (with duplicates) in `<out>.rejects.<task>.jsonl`."""

    split: str | None = None
    """For a `DatasetDict` folder (`save_to_disk` output with `dataset_dict.json`): the split to
    read; null reads every split, in the order of `dataset_dict.json`."""


class FeaturesConfig(Section):
    """Image features for clustering and retrieval (always L2-normalised)."""

    extractor: Literal["resnet50", "dinov2", "clip", "siglip", "pixels"] = "resnet50"
    """`resnet50`: transformers `ResNetModel`, pooled 2048-d (the paper's choice); `dinov2`:
    `Dinov2Model` pooled (CLS) output; `clip`: `CLIPVisionModelWithProjection` image embeds;
    `siglip`: `SiglipVisionModel` pooled output; `pixels`: no weights: the image resized to
    `pixels_size` x `pixels_size` RGB, flattened, centred and L2-normalised (tests, synthetic
    data)."""

    model_dir: str | None = None
    """Local directory of the model and its image processor (`save_pretrained` layout). Required
    by every extractor but `pixels` (checked when features are extracted); nothing is
    downloaded."""

    batch_size: int = Field(32, ge=1)
    """Images per forward pass (and per cache shard)."""

    pixels_size: int = Field(16, ge=1, le=256)
    """Side of the downsampled image for the `pixels` extractor (features = 3 * side^2)."""

    cache_dir: str = ".cache/pairuni/features"
    """Features are cached here, one shard per batch, keyed by image sha256 + extractor + model
    directory hash: a second run reads them instead of recomputing."""

    device: str = "cpu"
    """Torch device for the extractor, e.g. `cpu` or `cuda:0`."""


class SelectConfig(Section):
    """Aligned pairs: one representative per cluster of U ∪ G image features (Algorithm 1)."""

    method: Literal["kmeans", "random"] = "kmeans"
    """`kmeans`: k-means (Lloyd's algorithm, exact assignments) over U ∪ G, the member most
    similar to its centroid is kept (the paper). `random`: `num_clusters` samples drawn uniformly
    (the Table 9 ablation)."""

    num_clusters: int = Field(5000, ge=1)
    """K: clusters (and at most this many aligned pairs). Not given by the paper; 5000 matches
    its 4,971 aligned pairs. Capped at the number of samples."""

    init: Literal["k-means++", "random"] = "k-means++"
    """k-means initialisation: `k-means++` seeding (on a seeded subsample of 3k points projected
    to 64 dimensions, so that k = 5000 stays fast) or `random` (k distinct samples)."""

    iterations: int = Field(2, ge=0)
    """Lloyd iterations after the initialisation: each assigns every sample to its nearest
    centre exactly and moves each centre to the float64 mean of its members (an empty centre is
    re-seeded at the sample farthest from its centre). One more exact assignment, to the final
    centres, picks the medoids, so T iterations cost T + 1 passes over all samples x centres
    (~2.2 TFLOP each at 107k x 2,048, K = 5,000); 0 keeps the seeds. Stops early once the
    assignment no longer changes."""

    seed: int = 0
    """Seed of the k-means initialisation (or of the random selection): the whole build is
    deterministic for a seed, whatever the thread count."""

    @model_validator(mode="before")
    @classmethod
    def _removed_minibatch_keys(cls, data: object) -> object:
        """`batch_size` and `epochs` set the mini-batch k-means that Lloyd iterations replaced;
        a config still setting them is told what to write instead (never silently ignored)."""
        if isinstance(data, dict):
            removed = [key for key in ("batch_size", "epochs") if key in data]
            if removed:
                one = len(removed) == 1
                raise ValueError(
                    f"{' and '.join(removed)} {'was' if one else 'were'} removed: selection now "
                    "runs Lloyd iterations over every sample (no mini-batches); delete "
                    f"{'it' if one else 'them'} and set `iterations` instead (default 2; each "
                    "iteration is one pass over all samples, as each epoch was: `epochs: 3` ~ "
                    "`iterations: 3`)"
                )
        return data


class RetrieveConfig(Section):
    """Retrieved pairs: generation samples matched to similar remaining understanding samples."""

    threshold: float = Field(0.6, ge=-1.0, le=1.0)
    """delta: a pair needs cosine similarity s_p >= threshold (the paper: 0.6; Table 8 ablates
    0.5 and 0.7)."""

    top_n: int = Field(1, ge=1)
    """n: understanding samples a generation sample may take (the paper implies 1)."""

    order: Literal["best-first", "dataset"] = "best-first"
    """Greedy visiting order of generation samples (the paper does not specify it).
    `best-first`: next is the generation sample whose most similar *remaining* understanding
    sample is the most similar overall (ties: lower generation index, then lower understanding
    index); it then takes its top_n remaining candidates at once. `dataset`: generation samples
    in file order, each taking its top_n remaining candidates above the threshold."""


class CompleteConfig(Section):
    """Cross-modal semantic completion: U -> prompt, G -> multiple-choice question and answer."""

    backend: Literal["openai", "local", "oracle"] = "openai"
    """`openai`: any OpenAI-compatible chat API (OpenAI, vLLM, SGLang); `local`: a transformers
    VLM from `local_model_dir`; `oracle`: the ShapesWorld oracle (reads each record's `scene`)."""

    base_url: str | None = None
    """API base URL, e.g. `http://127.0.0.1:8000/v1` for a local vLLM server; null for OpenAI."""

    model: str = "o3"
    """Model name sent to the API (the paper used GPT-o3)."""

    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key. The key itself is never written to
    configs, caches, logs or outputs."""

    templates_dir: str | None = None
    """A directory with `understanding.yaml` and `generation.yaml` prompt templates (copy the
    packaged ones from src/pairuni/pairing/templates and edit); null uses the packaged ones."""

    send_image: bool = True
    """Attach the image (as a data URL) to requests; turn off for text-only models."""

    verify: bool = True
    """Ask the model to check each completion against the original record; a failed check
    regenerates."""

    max_attempts: int = Field(3, ge=1)
    """Generations per record (first try + regenerations after a failed verification or invalid
    JSON) before the record is dropped with its reason logged."""

    max_concurrency: int = Field(8, ge=1)
    """Requests in flight at once."""

    requests_per_minute: float | None = Field(None, gt=0)
    """Client-side rate limit; null for none."""

    max_retries: int = Field(6, ge=0)
    """Retries of one request on HTTP 429, 5xx, timeouts and connection errors. A server's
    Retry-After is honoured when longer than the backoff (every request pauses that long); one
    above 10 minutes fails the request at once."""

    stop_after_failures: int = Field(32, ge=0)
    """Stop the job once this many records in a row ended without a completion because the
    service kept failing or refused the request (an outage, or a setting the server rejects,
    would otherwise go through every record); what finished is kept and the command exits
    non-zero with the cause. 0 never stops early."""

    backoff_initial_s: float = Field(1.0, ge=0)
    """First retry delay; it doubles per retry (exponential backoff) with full jitter."""

    backoff_max_s: float = Field(60.0, ge=0)
    """Upper bound of one retry delay."""

    timeout_s: float = Field(120.0, gt=0)
    """Timeout of one HTTP request."""

    max_tokens: int | None = Field(None, ge=1)
    """`max_completion_tokens` sent to the API; null leaves the server's default."""

    temperature: float | None = Field(None, ge=0)
    """Sampling temperature sent to the API; null leaves the server's default (o3 accepts only
    its default)."""

    cache_dir: str = ".cache/pairuni/completions"
    """Persistent cache of finished completions, keyed by the record's content and every setting
    that shapes a completion (model, base_url, template text and version, verify, send_image,
    temperature, max_tokens): a re-run never pays twice. Service failures and refusals are never
    cached."""

    price_input_per_mtok: float = Field(0.0, ge=0)
    """Price of one million prompt tokens, for the cost total in the summary."""

    price_output_per_mtok: float = Field(0.0, ge=0)
    """Price of one million completion tokens, for the cost total in the summary."""

    local_model_dir: str | None = None
    """For `backend: local`: a local directory with a transformers image-text-to-text model."""

    @field_validator("api_key_env")
    @classmethod
    def _looks_like_env_name(cls, value: str) -> str:
        if not value or value.startswith(("sk-", "sk_")) or not value.replace("_", "").isalnum():
            raise ValueError(
                "api_key_env is the *name* of an environment variable (e.g. OPENAI_API_KEY), "
                "never the key itself; export the key in that variable"
            )
        return value


class PairingConfig(Section):
    """Building the PairUG file (arXiv 2510.25682 §2.1, Algorithm 1): sources, cross-modal
    completion, image features, k-means medoids as aligned pairs, thresholded greedy retrieval."""

    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    """Input single-task datasets, column mapping, filters and de-duplication."""

    complete: CompleteConfig = Field(default_factory=CompleteConfig)
    """The annotator that completes U samples with prompts and G samples with QA."""

    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    """The image encoder for similarities."""

    select: SelectConfig = Field(default_factory=SelectConfig)
    """Aligned-pair selection."""

    retrieve: RetrieveConfig = Field(default_factory=RetrieveConfig)
    """Retrieved-pair matching."""

    variant: Literal["pairug", "aligned-only", "retrieved-only", "random-pairs", "unpaired"] = (
        "pairug"
    )
    """What to write (the paper's Table 5 rows): `pairug` aligned + retrieved pairs;
    `aligned-only`; `retrieved-only` (retrieval over all samples, no selection); `random-pairs`
    every generation sample joined to a random distinct understanding sample (s_p is their real
    cosine clipped to [0, 1]); `unpaired` the same random joining marked `unpaired: true` so
    that a sampler may re-draw it. For the last two set `algo.pair_weighting: none`."""

    on_missing_completion: Literal["error", "drop"] = "error"
    """A selected (medoid) sample with no completed quadruple: `error` writes the missing ones to
    `<out>.needs-completion.<task>.jsonl` and stops (complete those files, then rebuild);
    `drop` leaves that cluster without an aligned pair and returns the sample to the retrieval
    pool."""

    images: Literal["keep", "embed", "copy"] = "keep"
    """How the PairUG file stores images: `keep` absolute paths, `embed` the bytes, `copy` files
    beside the output."""

    @model_validator(mode="after")
    def _paths_from_the_config_folder(self, info: ValidationInfo) -> PairingConfig:
        """Relative paths written in a config file resolve from that file's folder; those given
        with --set, and defaults, from the working directory (docs/pairing.md, "Paths")."""
        context = info.context if isinstance(info.context, dict) else {}
        folder, set_keys = context.get("config_dir"), context.get("set_keys") or set()
        for dotted in PATH_KEYS:
            section_name, name = dotted.split(".")
            section = getattr(self, section_name)
            value = getattr(section, name)
            if name not in section.model_fields_set or value is None:
                continue
            key = f"pairing.{dotted}"
            from_cli = any(key == k or key.startswith(k + ".") for k in set_keys)
            base = None if from_cli or folder is None else os.fspath(folder)
            if isinstance(value, list):
                resolved: str | list[str] = [_resolve(v, base) for v in value]
            else:
                resolved = _resolve(value, base)
            if resolved != value:
                setattr(section, name, resolved)
        return self


PATH_KEYS = (
    "sources.understanding",
    "sources.generation",
    "complete.templates_dir",
    "complete.cache_dir",
    "complete.local_model_dir",
    "features.model_dir",
    "features.cache_dir",
)
"""Every key of the `pairing` section that holds a path (or a list of paths)."""


def _resolve(path: str, base: str | None) -> str:
    """`~` expanded; a relative path joined to `base` (when given) and normalised."""
    path = os.path.expanduser(path)
    if base is None or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(os.path.abspath(base), path))
