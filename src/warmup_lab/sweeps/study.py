"""A study: the claim a sweep tests and, with ``study.max_seeds``, its rounds of seeds.

The resumable sweeper (``hydra_plugins/warmup_lab_sweeper``) builds a :class:`Study` from the
composed config before it launches anything, so a bad claim or design stops the sweep with one
line and exit code 2. For a sequential study the sweep's seed list is the first round; after
each round :meth:`Study.after_round` judges the claim (``analysis.sequential.judge``), writes
``study.json`` into the sweep directory (design, rounds, verdict per part after each round, why
it stopped) and says whether to go on. Later rounds repeat the sweep's grid with unused seeds
(``analysis.sequential.round_seeds``), so ``trainer.resume=true`` skips what is done and every
launcher works unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from warmup_lab.analysis.claimspec import ClaimError, ClaimSpec, load_claim
from warmup_lab.runs.progress import fmt_duration
from warmup_lab.sweeps.jobs import FINISHED
from warmup_lab.runs.runinfo import read_json, write_json

STUDY_FILE = "study.json"  # a sequential study's design and rounds in its sweep directory (written here)


def _seed_of(job: list[str]) -> int | None:
    for o in job:
        key, _, value = o.lstrip("+").partition("=")
        if key == "seed":
            try:
                return int(value)
            except ValueError:
                raise ClaimError(f"seed={value} is invalid: seeds must be integers") from None
    return None


def _with_seed(job: list[str], seed: int) -> list[str]:
    return [f"seed={seed}" if o.lstrip("+").partition("=")[0] == "seed" else o for o in job]


class Study:
    def __init__(self, spec: ClaimSpec | None, design, first: list[int], templates: list[list[str]]):
        self.spec, self.design, self.first, self.templates = spec, design, first, templates
        self.state: dict = {}
        self.elapsed = 0.0

    @property
    def sequential(self) -> bool:
        return self.design is not None and len(self.design.looks) > 1

    @property
    def max_jobs(self) -> int | None:
        return len(self.templates) * self.design.max_seeds if self.sequential else None

    @staticmethod
    def from_config(config, jobs: list[list[str]]) -> "Study":
        """The study of a sweep; a bad claim or design prints one line and exits with code 2."""
        try:
            return Study._build(config, jobs)
        except ClaimError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)

    @staticmethod
    def _build(config, jobs):
        from warmup_lab.analysis.sequential import design_from_study

        study = OmegaConf.select(config, "study")
        study = OmegaConf.to_container(study, resolve=True) if study is not None else {}
        ref = study.get("claim")
        if ref is None:
            if study.get("max_seeds") is not None:
                raise ClaimError("study.max_seeds needs a claim to decide: set study.claim (a preset's name, a "
                                 "claim YAML file, or an experiment preset that carries one)")
            return Study(None, None, [], [])
        spec = load_claim(ref)
        seeds = [_seed_of(j) for j in jobs]
        first = list(dict.fromkeys(s for s in seeds if s is not None))
        if study.get("max_seeds") is not None and (not first or None in seeds):
            raise ClaimError("study.max_seeds needs the sweep to list its seeds (seed=0,1,2 on the command line "
                             "or hydra.sweeper.params.seed): they are the first round")
        design = design_from_study(study, len(first)) if first else None
        templates = [j for j, s in zip(jobs, seeds) if first and s == first[0]]
        return Study(spec, design, first, templates)

    def progress_prefix(self, look: int) -> str:
        if not self.sequential:
            return "sweep"
        return f"{self.spec.name} round {look + 1} of at most {len(self.design.looks)}"

    def round_jobs(self, look: int) -> list[list[str]]:
        from warmup_lab.analysis.sequential import round_seeds

        return [_with_seed(t, s) for s in round_seeds(self.first, self.design, look) for t in self.templates]

    def after_round(self, look: int, wall_s: float, sweep_dir: Path) -> bool:
        """Judge the claim after round ``look`` (0-based); write study.json; True to stop."""
        from warmup_lab.analysis.load import load_runs
        from warmup_lab.analysis.sequential import judge, round_seeds, undecided

        path = Path(sweep_dir) / STUDY_FILE
        old = read_json(path) or {}
        old_walls = {r["look"]: r.get("wall_s") or 0.0 for r in old.get("rounds", [])}
        wall = max(wall_s, old_walls.get(look + 1, 0.0))
        if not self.state:
            self.state = {"claim": self.spec.name, "design": self.design.as_dict(), "first_seeds": self.first,
                          "rounds": [], "stopped": None}
        runs = [r for r in load_runs([sweep_dir], curves=False) if r.status in FINISHED]
        res = judge(self.spec, runs, self.design, self.first, n_looks=look + 1)
        self.elapsed += wall
        verdicts = {p.id: p.verdict for p in res.parts if p.primary or p.context}
        self.state["rounds"].append({"look": look + 1, "seeds": round_seeds(self.first, self.design, look),
                                     "n_seeds": res.design["looks_taken"][-1]["n_seeds"], "wall_s": round(wall, 1),
                                     "alpha": res.design["alphas"][look], "verdicts": verdicts,
                                     "claim_verdict": res.verdict})
        open_parts = undecided(res)
        stop = None
        if not open_parts:
            stop = f"decided after round {look + 1}"
        elif look + 1 >= len(self.design.looks):
            stop = f"study.max_seeds={self.design.max_seeds} reached with {len(open_parts)} part(s) undecided"
        elif self.design.budget_minutes is not None:
            ns = self.design.looks
            nxt = wall * (ns[look + 1] - ns[look]) / max(1, ns[look] - (ns[look - 1] if look else 0))
            if self.elapsed + nxt > self.design.budget_minutes * 60:
                stop = (f"study.budget_minutes={self.design.budget_minutes:g}: {fmt_duration(self.elapsed)} used, the "
                        f"next round would take about {fmt_duration(nxt)}")
        self.state["stopped"] = stop
        write_json(path, self.state)
        parts = ", ".join(f"{_short(i)} {v}" for i, v in verdicts.items())
        seeds = res.design["looks_taken"][-1]["n_seeds"]
        if stop:
            print(f"{self.spec.name}: after round {look + 1} ({seeds} seeds): {res.verdict.upper()} ({parts}). "
                  f"Stopped: {stop}.", file=sys.stderr, flush=True)
        else:
            nxt = round_seeds(self.first, self.design, look + 1)
            print(f"{self.spec.name}: after round {look + 1} ({seeds} seeds, {fmt_duration(self.elapsed)}): {parts}. "
                  f"Round {look + 2}: seeds {nxt[0]}-{nxt[-1]}.", file=sys.stderr, flush=True)
        return stop is not None


def _short(part_id: str, width: int = 32) -> str:
    return part_id if len(part_id) <= width else part_id[: width - 3] + "..."


def check_study(study) -> None:
    """The checks a single run makes of its ``study`` block (raises ``ClaimError``)."""
    from warmup_lab.analysis.sequential import design_from_study

    if study is None:
        return
    node = OmegaConf.to_container(study, resolve=True) if not isinstance(study, dict) else study
    if node.get("claim") is not None:
        load_claim(node["claim"])
    design_from_study(node, 1)


__all__ = ["Study", "STUDY_FILE", "check_study"]
