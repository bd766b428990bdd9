"""ShapesWorld: a synthetic world of coloured shapes where every reward is exact.

Scenes (`scene`), rendering (`render`), questions (`questions`), GenEval-style prompts
(`prompts`), the oracle annotator (`oracle`), the detector (`detect`), the GenEval-style scorer
and rewards (`geneval`), dataset writing (`build`) and the `pairuni shapes` commands (`cli`).
"""
