"""
gem_env.py -- GEM's offline text games (the `gem-llm` package, the environment suite the paper used out of
domain) behind the toy world's API, with privileged information from a solver that reads the game's hidden state.

    python pi_distill.py --model=Qwen/Qwen3-0.6B --env=gem:game:TowerofHanoi-v0-easy --max_turns=12
    python gem_env.py game:Mastermind-v0-easy     # two games played by the solver, with every PI kind

The PI kinds keep their meaning from env_api.PI_KINDS, in decreasing information:

    game            calls (exact actions)            names (what, not how)           hint (a rule)
    TowerofHanoi    the optimal moves, one per step  which disk moves at each step   the smallest disk's cycle
    GuessTheNumber  the number, as the winning guess the half of the range holding it the halving strategy
    Mastermind      the code, as the winning guess   its digits, sorted              its first digit

Reward: 1 when GEM says the game is solved, else 0, at the episode's end (GEM's partial credit at the turn
limit, its per-peg rewards and its -0.1 format penalty are not used, so `success` means the same in every
environment). An episode ends at the game's own turn limit or at --max_turns, whichever comes first (the agent cuts
every environment's episodes there; Tower of Hanoi with 3 disks takes 7 moves). A GEM game ends at the first action
it cannot parse. Splits: train seeds 0, 1, ... and test seeds from 2^31 on are disjoint, but some games have
few distinct tasks: Tower of Hanoi has one per disk count, GuessTheNumber-easy ten, Mastermind-easy thirty.
"""
import random
import sys

import gem
import numpy as np

from env_api import PI_KINDS, step_label

SYSTEM_PROMPT = "you play a text game . write one move per turn , in the form the game asks for ."
GAMES = ("TowerofHanoi", "GuessTheNumber", "Mastermind")
NLTK_WORDS = "the nltk 'words' corpus"
NEEDS_DOWNLOAD = dict(Wordle=NLTK_WORDS, Hangman=NLTK_WORDS, WordSearch=NLTK_WORDS,  # by game, or by GEM's family:
                      **dict.fromkeys(("math", "code", "qa", "logic", "eval"), "a data set from the Hugging Face Hub"))
REGISTRY = gem.envs.registration.ENV_REGISTRY
SPLIT_SEEDS = {"train": 0, "test": 2**31}  # GEM seed = split offset + task seed (NumPy's seeds stop at 2^32)


def supported_ids():
    return [i for i in REGISTRY if game_name(i) in GAMES]


def game_name(env_id):
    return env_id.removeprefix("game:").split("-")[0]


def check_env_id(env_id):
    """Stops with a message that says why, for ids this adapter cannot play."""
    supported = ", ".join(supported_ids())
    download = NEEDS_DOWNLOAD.get(game_name(env_id)) or NEEDS_DOWNLOAD.get(env_id.split(":")[0])
    if download:
        raise SystemExit(f"GEM env {env_id!r} is refused: it downloads {download} at run time, and nothing here "
                         f"downloads. Supported: {supported}")
    if env_id not in supported_ids():
        why = "a game without a solver here" if env_id in REGISTRY else "unknown id"
        raise SystemExit(f"GEM env {env_id!r} is not supported ({why}). Supported: {supported}")


def isolated(fn):
    """GEM seeds Python's and NumPy's global random generators: run fn without changing the caller's."""
    saved = random.getstate(), np.random.get_state()
    try:
        return fn()
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def hanoi_moves(n, source="A", target="C", spare="B"):
    """The optimal solution: 2^n - 1 moves of (disk, from, to)."""
    if n == 0:
        return []
    return hanoi_moves(n - 1, source, spare, target) + [(n, source, target)] + hanoi_moves(n - 1, spare, target, source)


def solve(game, g):
    """The solver's play on the reset GEM env g, as (reasoning, action) per turn, and the three PI kinds."""
    if game == "TowerofHanoi":
        moves = hanoi_moves(g.num_disks)
        demo = [(f"move disk {d} from {a} to {b}", f"\\boxed{{{a} {b}}}") for d, a, b in moves]
        names = "\n".join(f"{step_label(k)} disk {d}" for k, (d, _, _) in enumerate(moves, 1))
        cycle = "A -> C -> B -> A" if g.num_disks % 2 else "A -> B -> C -> A"
        hint = f"the smallest disk moves every other turn , always {cycle} ; in between , the only other legal move"
    elif game == "GuessTheNumber":
        n, lo, hi = g.game_number, g.min_number, g.max_number
        mid = (lo + hi) // 2
        demo = [(f"the number is {n}", f"\\boxed{{{n}}}")]
        names = f"the number is between {lo} and {mid}" if n <= mid else f"the number is between {mid + 1} and {hi}"
        hint = "guess the middle of the range that is left , then go higher or lower as told"
    else:  # Mastermind
        code = " ".join(map(str, g.game_code))
        demo = [(f"the code is {code}", f"\\boxed{{{code}}}")]
        names = "the code uses the digits " + " ".join(map(str, sorted(g.game_code)))
        hint = f"the first digit of the code is {g.game_code[0]}"
    calls = "\n".join(f"{step_label(k)} {action}" for k, (_, action) in enumerate(demo, 1))
    return demo, dict(calls=calls, names=names, hint=hint)


def solved(game, g):
    if game == "TowerofHanoi":
        return g.board["C"] == list(range(g.num_disks, 0, -1))
    if game == "GuessTheNumber":
        return g.game_number in g.previous_guesses
    return tuple(g.game_code) in g.previous_guesses


def with_suffix(text, info):
    """GEM puts what the player must see next (Tower of Hanoi's board) in info["suffix"], as its own wrappers do."""
    return text + ("\n" + info["suffix"] if info.get("suffix") else "")


class GemEnv:
    """A GEM game with the toy world's API: reset(seed) -> (request, info), step(text) -> (obs, reward, terminated,
    truncated, info), privileged_info(kind), demonstration()."""

    def __init__(self, env_id, split="train"):
        check_env_id(env_id)
        assert split in SPLIT_SEEDS, f"split must be one of {list(SPLIT_SEEDS)}"
        self.env_id, self.split, self.game = env_id, split, game_name(env_id)
        self.gem = isolated(lambda: gem.make(env_id))
        self.done = True

    def reset(self, seed):
        instructions, info = isolated(lambda: self.gem.reset(seed=SPLIT_SEEDS[self.split] + seed))
        self.demo, self.pi = solve(self.game, self.gem)
        self.done = False
        return with_suffix(instructions, info), dict(system=SYSTEM_PROMPT)

    def privileged_info(self, kind):
        if kind not in PI_KINDS:
            raise ValueError(f"unknown PI kind {kind!r}; expected one of {PI_KINDS}")
        return self.pi[kind]

    def demonstration(self):
        return self.demo

    def step(self, action_text):
        if self.done:
            raise RuntimeError("call reset() before step(), and again after the episode ends")
        obs, _, terminated, truncated, info = self.gem.step(str(action_text))
        self.done = terminated or truncated
        reward = float(self.done and solved(self.game, self.gem))
        return (obs if self.done else with_suffix(obs, info)), reward, terminated, truncated, info


def make(split, cfg):
    """The --env=gem:<GEM env id> factory (the agent imports this module only for GEM runs)."""
    return GemEnv(cfg.env.removeprefix("gem:"), split)


if __name__ == "__main__":
    env = GemEnv(sys.argv[1] if len(sys.argv) > 1 else "game:TowerofHanoi-v0-easy")
    for seed in range(2):
        request, info = env.reset(seed)
        print(f"=== {env.env_id}, train task {seed}\n--- system: {info['system']}\n--- user: {request}")
        for kind in PI_KINDS:
            print(f"--- PI = {kind}:\n{env.privileged_info(kind)}")
        for reasoning, action in env.demonstration():
            obs, reward, *_ = env.step(action)
            print(f"    solver thinks: {reasoning}\n    solver acts  : {action}\n    game         : {obs}")
        print(f"--- reward {reward}\n")
