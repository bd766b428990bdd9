"""The ImgEdit Basic bench's edit types, their criteria, and pairuni's own judge prompts (one
per type).

They ask for the same three criteria per type as the official `Benchmark/Basic/prompts.json`
(PKU-YuanGroup/ImgEdit, unchanged since c14480a, 2025-05-27), under the same labels, each scored
1-5, with the official rule that the second and third score may not exceed the first, and the
same reply layout (`Brief reasoning: ...` then one `<Label>: <score>` line per criterion). The
wording of the rubrics is ours, not the official text: a judge's scores depend on the exact
wording, so numbers made with these prompts are not comparable with published ones. To
reproduce published numbers pass the official file (`--judge-prompts prompts.json`,
`eval.imgedit.judge_prompts`).

`PLACEHOLDER` marks where the edit instruction goes, as in the official file.
"""

from __future__ import annotations

PLACEHOLDER = "<edit_prompt>"

EDIT_TYPES = (
    "add",
    "adjust",
    "extract",
    "replace",
    "remove",
    "background",
    "style",
    "compose",
    "action",
)
"""The nine edit types, in the order of the ImgEdit leaderboard's columns."""

TYPE_ALIASES = {"alter": "adjust"}
"""Older names of a type: c14480a (2025-05-27) called `adjust` `alter`."""

CRITERIA: dict[str, tuple[str, str, str]] = {
    "add": ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Coherence"),
    "adjust": ("Prompt Compliance", "Visual Seamlessness", "Physical & Detail Fidelity"),
    "extract": ("Object Identity", "Mask Precision", "Visual Quality"),
    "replace": ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"),
    "remove": ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"),
    "background": ("Instruction Compliance", "Visual Seamlessness", "Physical Consistency"),
    "style": ("Style Fidelity", "Content Preservation", "Rendering Quality"),
    "compose": (
        "Instruction Compliance",
        "Visual Naturalness",
        "Physical Consistency & Fine Detail",
    ),
    "action": ("Action Fidelity", "Identity Preservation", "Visual & Anatomical Coherence"),
}
"""The three criteria of each edit type, in reply order: the labels the official prompts ask the
judge to write its scores under (and so the labels the score parser looks for)."""

BEFORE_AFTER = "The first image is the original, the second the edited result."

# Per type: (what is rated, what the judge is shown, five anchors per criterion, last line).
RUBRICS: dict[str, tuple[str, str, tuple[tuple[str, ...], ...], str]] = {
    "add": (
        "edits that add objects to an image",
        "You see the image before and after the edit, and the editing instruction.",
        (
            (
                "nothing was added, or what was added is broken",
                "the added thing is the wrong kind of object or has nothing to do with the "
                "instruction",
                "the right kind of object, but its position, colour, size or number is wrong",
                "the main attributes are right; small details are off or missing",
                "every attribute the instruction names is right and the scene makes sense",
            ),
            (
                "the image is broken or full of artefacts",
                "the object looks pasted in; its style, sharpness or colours clearly differ",
                "the style is close, but the lighting or colours clash",
                "nearly uniform; small edge flaws show only when zoomed in",
                "the addition cannot be told apart from the original picture",
            ),
            (
                "grave physical errors (floating, wrong perspective or light), important "
                "original content covered, or the background badly distorted",
                "contact and occlusion poorly handled; the background visibly shifted or noisy",
                "light, perspective and contact mostly right; small acceptable flaws; little "
                "change to the background",
                "believable shadows, reflections and materials; no original detail lost; the "
                "background barely changed",
                "the addition makes the scene more real: exact highlights and shadows, the "
                "background untouched",
            ),
        ),
        BEFORE_AFTER,
    ),
    "adjust": (
        "edits that change an attribute (colour, material, texture, ...) of an object",
        "You see the image before and after the edit, and the editing instruction.",
        (
            (
                "the target is unchanged, the wrong object was changed, or its shape changed",
                "the right object but the wrong value or direction of the attribute, only part "
                "of it changed, other objects changed too, or slight stretching or cropping",
                "mostly the right object and attribute, but a clear error in hue, brightness "
                "or texture, some collateral edits or visible distortion",
                "every requested object changed in the requested attribute only, its shape "
                "kept; small inaccuracies in colour, material or amount",
                "exactly the requested objects and attributes changed as asked, the shape "
                "fully intact, nothing else edited",
            ),
            (
                "heavy colour bleeding, mosaic or noise; the image is nearly unusable",
                "smeared or bleeding edges, abrupt shifts of resolution or tone, clipped "
                "highlights or shadows",
                "the palette is fine overall but the local tone or grain conflicts; soft edges",
                "a unified style and smooth transitions; slight edge flaws when zoomed in",
                "no trace of the edit; the new attribute sits naturally in the scene's light",
            ),
            (
                "floating or intersecting objects, badly wrong perspective or light, the "
                "background warped",
                "missing shadows or highlights, wrong reflections, the background discoloured "
                "or distorted",
                "light, perspective and contact largely right; minor flaws; the background "
                "touched only locally",
                "the changed material reacts believably to the scene's light; original details "
                "kept",
                "a highly realistic material response (fine highlights, bounced light); the "
                "scene looks more real than before",
            ),
        ),
        BEFORE_AFTER,
    ),
    "extract": (
        "object extraction: the requested object cut out onto a plain white background",
        "You see the original image, the extraction result and the editing instruction.",
        (
            (
                "the wrong object, or several objects, extracted",
                "the right kind of object but only part of it, or pieces of other things included",
                "largely the right object with small parts missing or extra; still recognisable",
                "the whole object, clearly the same one; tiny cropping errors",
                "exactly the requested object, complete, unmistakably the same instance",
            ),
            (
                "large leftovers of the background, holes in the mask, or a backdrop that is "
                "mostly not white",
                "jagged edges, colour fringes, grey or coloured patches in the white",
                "an acceptable mask; slightly soft edges or a faint halo on a close look",
                "clean, smooth edges and a uniform white (#FFFFFF) backdrop; tiny flaws when "
                "zoomed in",
                "a crisp anti-aliased outline, no spill or halo, pure white everywhere",
            ),
            (
                "heavy blur, compression, deformation or missing parts",
                "noticeable noise, colour shift or warping; details clearly degraded",
                "intact, with slight softness or noise; colours mostly kept",
                "sharp, faithful colours; negligible artefacts",
                "pristine detail and true colours, no artefacts or distortion",
            ),
        ),
        "The first image is the original, the second the extracted object.",
    ),
    "replace": (
        "edits that replace an object with another",
        "You see the image before and after the edit, and the editing instruction.",
        (
            (
                "the target is not replaced, or something unrelated was edited",
                "only part of the target replaced, or the new object is the wrong kind",
                "mostly replaced, but other objects changed, remnants remain, or the number or "
                "position is clearly wrong",
                "the right object fully replaced; minor attribute errors (colour, size, ...)",
                "exactly the named objects replaced; the new ones match the instruction in "
                "kind, number, position, scale, pose and detail",
            ),
            (
                "the image is badly broken, or the new object deformed or very blurry",
                "obvious seams or smears, a strong mismatch of resolution or colour, the "
                "background not restored",
                "a similar style, but the lighting or palette clashes; fuzzy edges or noise",
                "almost uniform; tiny edge artefacts on a close look only",
                "seamless: the edited area cannot be found",
            ),
            (
                "floating or intersecting objects, severe perspective or light errors, key "
                "original content ruined, the background warped",
                "missing shadows or occlusion, large shifts or holes in the background",
                "light, perspective and contact mostly right; small tolerable errors; local "
                "changes to the background",
                "the new object interacts realistically with the scene (shadows, reflections, "
                "texture); details kept; minimal change to the background",
                "physically flawless, more realistic than before; the background untouched",
            ),
        ),
        BEFORE_AFTER,
    ),
    "remove": (
        "edits that remove objects from an image",
        "You see the image before and after the edit, and the editing instruction.",
        (
            (
                "nothing removed, or something unrelated edited",
                "the target only partly removed, another instance or kind deleted, or "
                "something new fills the gap",
                "mostly removed, but other objects deleted too or fragments of the target remain",
                "only the named objects removed, but a few tiny items lost by mistake, or the "
                "count is off",
                "all and only the requested objects removed; everything else untouched",
            ),
            (
                "badly broken: big holes or strong artefacts",
                "visible erase marks, a colour or resolution mismatch, the background not restored",
                "acceptable, but the lighting, colour or style clash; blur or noise visible",
                "a consistent style; small edge flaws only when zoomed in",
                "the removal is practically impossible to spot",
            ),
            (
                "severe physical errors, key scene content damaged, the background warped",
                "large unfilled gaps or obvious shifts of the background",
                "light, perspective and contact mostly right; small flaws; local changes to "
                "the background",
                "a clean reconstruction of the background; details kept; tiny changes outside "
                "the removed area only",
                "a flawless fill of light, shadow and texture with fine detail",
            ),
        ),
        BEFORE_AFTER,
    ),
    "background": (
        "edits that change the background of an image",
        "You see the image before and after the edit, and the editing instruction.",
        (
            (
                "no change, an unrelated background, or the foreground replaced or distorted too",
                "the background partly replaced or of the wrong content or style; the "
                "foreground visibly changed",
                "the main background replaced, but elements missing or extra, or a slight "
                "spill onto the subject's edges",
                "the requested background fully there; the foreground intact except tiny "
                "flaws, or a small mismatch (e.g. colour tone)",
                "the background exactly as asked (content, style, placement); the foreground "
                "untouched",
            ),
            (
                "tearing, posterisation, extreme blur or noise: the edit is obvious at once",
                "cut-out halos, a gap in colour or resolution, smudges",
                "an acceptable blend that shows on a closer look (slightly blurry edges, "
                "grain, a palette shift)",
                "nearly invisible seams; textures and sharpness match; small issues when zoomed in",
                "a composite that cannot be told from a real photograph",
            ),
            (
                "a severe mismatch: wrong horizon, conflicting light, a floating subject, "
                "warped geometry",
                "noticeable inconsistencies of light, shadows, scale or depth",
                "believable overall; small errors in shadow length, perspective or ambient colour",
                "lighting, scale, depth and viewpoint well matched; subtle differences only",
                "subject and new background share one coherent light, shadows, reflections, "
                "perspective and depth",
            ),
        ),
        BEFORE_AFTER,
    ),
    "style": (
        "style transfer edits",
        "You see the original image, the restyled result and the editing instruction, which "
        "names the target style.",
        (
            (
                "the target style is absent or clearly wrong",
                "the style shows only in places, or mixed with other styles",
                "its key traits (palette, strokes, texture) are present but patchy",
                "the style covers nearly the whole image; small local mismatches",
                "a complete, faithful style: colour, texture, strokes and light match everywhere",
            ),
            (
                "the main objects or the layout lost or distorted; the scene hardly recognisable",
                "the subject recognisable, but its size, perspective or key parts clearly "
                "wrong or missing",
                "the structure right; some local warping or small omissions",
                "nearly all geometry intact; slight harmless deformation",
                "every object and spatial relation kept; only stylistic distortion",
            ),
            (
                "heavy noise, banding, damage or blur: unusable",
                "visible seams, aliasing, colour drift, low resolution or chaotic strokes",
                "moderate: local blur, noise or breaks in texture, acceptable overall",
                "sharp, coherent strokes; tiny artefacts when zoomed in",
                "high resolution, no artefacts; natural strokes, textures and transitions",
            ),
        ),
        "The first image is the original, the second the restyled result.",
    ),
    "compose": (
        "hybrid edits: several operations on several objects",
        "You see the image before and after the edit, and the editing instruction.",
        (
            (
                "neither the objects nor the operations match the instruction; wrong items "
                "edited or shapes distorted",
                "only one object edited correctly, or both with wrong or partial operations; "
                "other items changed",
                "both targets edited with broadly the right operation, but details missing "
                "(a wrong colour value, an incomplete removal, ...)",
                "both objects get exactly their operations; tiny deviations in amount or "
                "position; no unintended edits",
                "each object fully reflects its operation; everything else untouched",
            ),
            (
                "large artefacts, obvious cut-outs, heavy blur or noise",
                "edge halos, a colour or resolution mismatch, awkward scale",
                "acceptable but visible on a close look: soft edges, a slight shift of palette "
                "or focus",
                "the edits blend smoothly; seams are hard to find",
                "colour grading, grain, resolution and style match the original completely",
            ),
            (
                "a severe mismatch of light or perspective, missing or wrong shadows, floating "
                "or warped objects",
                "noticeable but tolerable inconsistencies of light, scale or depth",
                "plausible; small errors in shadows, reflections or texture alignment",
                "lighting, perspective and materials closely matched; subtle flaws only when "
                "zoomed in",
                "shadows, highlights, reflections, depth and texture perfectly integrated",
            ),
        ),
        BEFORE_AFTER,
    ),
    "action": (
        "edits that change a person's action, pose or expression",
        "You see the image before and after the edit, and the editing instruction.",
        (
            (
                "no visible change, or the wrong action or expression",
                "a partial or clearly wrong pose; only some body parts change; the expression "
                "goes the wrong way",
                "the idea is there, but details are off (angle, side, intensity, a missing "
                "gesture)",
                "the requested pose or expression, with small inaccuracies",
                "exact: every limb, gesture and facial muscle as described",
            ),
            (
                "the person is unrecognisable; face or body replaced",
                "strong drift in face, hair or clothing",
                "mostly the same person; moderate changes to some features",
                "clearly the same person; subtle differences of style or lighting only",
                "face, hair, skin tone, clothing and accessories perfectly preserved",
            ),
            (
                "severe artefacts: broken or duplicated limbs, extreme distortion, heavy noise "
                "or blur",
                "cut-out halos, errors of proportion, lighting or perspective clearly off",
                "plausible; minor issues at joints or in shading; slight noise",
                "clean: anatomy, light, depth and edges consistent; flaws only on a close look",
                "flawless anatomy, lighting, shadows and texture",
            ),
        ),
        BEFORE_AFTER,
    ),
}


def rubric_prompt(edit_type: str) -> str:
    """pairuni's judge prompt for one edit type, with `PLACEHOLDER` for the instruction."""
    subject, shown, anchors, last_line = RUBRICS[edit_type]
    labels = CRITERIA[edit_type]
    lines = [
        f"You rate {subject}. {shown} Score the edit on three criteria, each from 1 (worst) "
        "to 5 (best):",
        "",
    ]
    for label, levels in zip(labels, anchors, strict=True):
        lines.append(label)
        lines += [f"{score}  {text[0].upper()}{text[1:]}." for score, text in enumerate(levels, 1)]
        lines.append("")
    lines += [
        f"Neither the {labels[1]} score nor the {labels[2]} score may be higher than the "
        f"{labels[0]} score.",
        "",
        "Reply in exactly this format, with nothing else:",
        "Brief reasoning: <at most 20 words>",
        *(f"{label}: <a whole number from 1 to 5>" for label in labels),
        "",
        f"Editing instruction: {PLACEHOLDER}",
        "",
        last_line,
    ]
    return "\n".join(lines)


PAIRUNI_PROMPTS: dict[str, str] = {edit_type: rubric_prompt(edit_type) for edit_type in CRITERIA}
"""Edit type -> pairuni's prompt (the default when no `--judge-prompts` file is given)."""
