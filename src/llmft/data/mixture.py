"""The mixture stage of `llmft data prepare`: per-source caps and weights on the train split, so a large source can
be balanced against a small one. Runs on per-record arrays after decontamination, so dev and test are the same
whatever the mixture (and decontaminated against the whole train split).

- `source_caps: {alpaca: 1000}`: at most 1000 alpaca train records.
- `source_weights: {alpaca: 1, chat: 3}`: the sources named share the train split 1 : 3. Records are only ever
  left out, never repeated: the sources are cut to the largest train set with these shares that their (capped)
  records allow. A named source without train records takes no part (it would leave nothing of the others).
Which records stay is a seeded draw per source (`splits.seeded_rng(seed, "mixture/<source>")`); the rest are
rejected with reason OVER_CAP or OVER_WEIGHT (stage "mix"), and `report` counts them per source for the manifest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from llmft.data import splits

OVER_CAP = "over source cap"
OVER_WEIGHT = "over source weight"


@dataclass
class Mixture:
    over_cap: np.ndarray          # per record: left out by its source's cap
    over_weight: np.ndarray       # per record: left out to meet the weights
    report: dict = field(default_factory=dict)


def canonical(limits: dict) -> dict:
    """Source names as records carry them (`self_instruct` -> `self-instruct`)."""
    return {str(name).replace("_", "-"): value for name, value in limits.items()}


def weighted_targets(available: dict[str, int], weights: dict[str, float]) -> dict[str, int]:
    """Train records per weighted source: the largest k with k * weight <= available for every one of them."""
    taking_part = {name: w for name, w in weights.items() if available.get(name, 0) > 0}
    if not taking_part:
        return {}
    scale = min(available[name] / w for name, w in taking_part.items())
    return {name: min(available[name], math.floor(scale * w + 1e-9)) for name, w in taking_part.items()}


def plan_mixture(source_codes: np.ndarray, train: np.ndarray, source_names: list[str], caps: dict, weights: dict,
                 seed: int) -> Mixture:
    """Which train records the caps and weights leave out (see the module docstring)."""
    caps, weights = canonical(caps), canonical(weights)
    over_cap = np.zeros(len(source_codes), dtype=bool)
    over_weight = np.zeros(len(source_codes), dtype=bool)
    if not caps and not weights:
        return Mixture(over_cap, over_weight, {})
    members = {name: np.flatnonzero(train & (source_codes == code)) for code, name in enumerate(source_names)}
    drawn = {name: idx[splits.seeded_rng(seed, f"mixture/{name}").permutation(len(idx))]
             for name, idx in members.items() if len(idx)}
    capped = {name: min(len(idx), int(caps[name])) if name in caps else len(idx) for name, idx in drawn.items()}
    targets = {**capped, **weighted_targets(capped, weights)}
    report = {"source_caps": caps, "source_weights": weights, "by_source": {}}
    for name, order in drawn.items():
        over_cap[order[capped[name]:]] = True
        over_weight[order[targets[name]:capped[name]]] = True
        report["by_source"][name] = {"train_before": len(order), OVER_CAP: len(order) - capped[name],
                                     OVER_WEIGHT: capped[name] - targets[name], "train_after": targets[name]}
    return Mixture(over_cap, over_weight, report)
