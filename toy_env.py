"""
toy_env.py -- a tau-bench in miniature: a shop's customer-service desk with tools.

A customer asks for something (cancel an order, return an item, where is my order). The agent calls
tools, one per turn, and reads their output:

    find_user NAME    -> "user U37"                     (the customer's id; only a lookup reveals it)
    get_orders UID    -> "orders #12 pending lamp , #47 delivered mug"
    get_orders UID ITEM -> "orders #12 pending lamp"    (only the orders of that item)
    cancel OID        -> cancels a pending order        (a write)
    return OID        -> returns a delivered order      (a write)
    respond TEXT      -> answers the customer and ends the episode

Reward is 1 only for a solution, else 0: on cancel/return tasks exactly one write, the right one (the right
tool on the target order, an id the agent has read in an observation), then `respond done`; on status tasks
no write, the orders looked up, then `respond` with exactly the target order's status. Any other write (a
guessed or unseen id, the wrong tool, a second write) and any other answer text ("pending shipped
delivered", "done U33") make the reward 0. Solving a task takes 3 correct calls whose arguments are
copied from earlier observations (name -> user id, item -> order id), then `respond`. A write changes the
world: after `cancel #12`, get_orders lists #12 as cancelled. The item filter of
`get_orders` does the matching of the request's item to its order that a database query would do: a
4-layer, 1M-parameter model never learned to do it by attention over a full listing (docs/toy_world.md: "Why
`get_orders` filters by item").

The scripted *frontier agent* solves every task and writes a short reasoning per turn. In a fraction of
tasks (`shortcut_frac`) it reads the hidden database and skips `find_user`: its action trace starts with
`get_orders U37`, an id the student cannot know -- the part of a frontier trace no student can reproduce.
Its actions, rendered three ways, are the privileged information (PI) of PAPER.md §2.

Train and test tasks draw names, items and ids from disjoint pools: held-out success measures
generalisation, not memorisation. Every id is a short word so that a BPE tokenizer makes it one token.

    python toy_env.py      # shows a few tasks played by the frontier agent, with every prompt
"""
import math
import random
import re

from env_api import PI_KINDS, pi_block, step_label

TOOLS = ("find_user", "get_orders", "cancel", "return", "respond")
STATUSES = ("pending", "shipped", "delivered")
MAX_ACTION_CHARS = 200
WORD = r"[A-Za-z0-9#_]+"  # what a tool argument may be (respond takes any text)
SYSTEM_PROMPT = "you serve shop customers . tools : find_user get_orders cancel return respond . one action per turn ."
POOLS = {  # disjoint entity pools per split
    "train": dict(
        names="alice bob carol dave erin frank grace heidi ivan judy kevin laura mike nina oscar peggy quinn "
              "rita sam tina ursula victor wendy xavier yara zack amber boris cleo dmitri".split(),
        items="lamp mug desk chair sofa kettle toaster blender rug mirror clock fan heater pillow blanket "
              "teapot vase shelf stool bench".split(),
        uids=[f"U{n}" for n in range(10, 60)], oids=[f"#{n}" for n in range(10, 60)]),
    "test": dict(
        names="edgar fiona gustav hazel igor jasmine klaus lena marco noor olga pablo rosa stefan".split(),
        items="radio camera printer speaker monitor jacket helmet tent".split(),
        uids=[f"U{n}" for n in range(60, 100)], oids=[f"#{n}" for n in range(60, 100)]),
}
TRAIN_ENTITIES = {w for key in ("names", "items", "uids", "oids") for w in POOLS["train"][key]}
REQUESTS = {
    "cancel": "i am {name} . please cancel my {item} order .",
    "return": "i am {name} . i want to return my {item} .",
    "status": "i am {name} . where is my {item} order ?",
}


def make_task(seed, split="train", shortcut_frac=0.3):
    """A task is a small hidden database (one customer, 2-3 orders) and a request about one order."""
    rng = random.Random(f"{split}:{seed}")  # string seeds are stable across Python runs
    pool = POOLS[split]
    kind = rng.choice(("cancel", "return", "status"))
    n_orders = rng.choice((2, 3))
    items = rng.sample(pool["items"], n_orders)
    statuses = [rng.choice(STATUSES) for _ in range(n_orders)]
    statuses[0] = {"cancel": "pending", "return": "delivered"}.get(kind, statuses[0])  # order 0 is the target
    orders = dict(zip(rng.sample(pool["oids"], n_orders), zip(statuses, items)))
    target = next(iter(orders))
    order_list = list(orders.items())
    rng.shuffle(order_list)  # the target is not always listed first
    return dict(split=split, seed=seed, kind=kind, name=rng.choice(pool["names"]), uid=rng.choice(pool["uids"]),
                orders=dict(order_list), target=target, item=orders[target][1], status=orders[target][0],
                shortcut=rng.random() < shortcut_frac)


def frontier_demo(task):
    """The frontier agent's solution: a list of (reasoning, action). It never fails; in shortcut tasks it
    skips the lookup because it reads the hidden database (a step the student cannot reproduce)."""
    name, uid, oid, item, status = task["name"], task["uid"], task["target"], task["item"], task["status"]
    steps = []
    if task["shortcut"]:
        steps.append((f"i already know {name} is {uid} ; i list the {item} orders", f"get_orders {uid} {item}"))
    else:
        steps.append((f"the customer is {name} ; i look up the id", f"find_user {name}"))
        steps.append((f"{name} is {uid} ; i list the {item} orders", f"get_orders {uid} {item}"))
    if task["kind"] == "status":
        steps.append((f"the {item} order {oid} is {status} ; i tell the customer", f"respond {status}"))
    else:
        op = task["kind"]
        steps.append((f"the {item} order is {oid} and {status} ; i {op} it", f"{op} {oid}"))
        steps.append((f"the {item} order is done ; i tell the customer", "respond done"))
    return steps


def render_pi(task, kind, actions=None):
    """Privileged information, from most to least informative. `actions` defaults to the frontier's;
    the warm-up passes the behaviour policy's own actions instead, so the base learns to follow a PI block."""
    actions = actions if actions is not None else [a for _, a in frontier_demo(task)]
    if kind == "calls":   # the exact action sequence, one numbered step per turn
        return "\n".join(f"{step_label(k)} {a}" for k, a in enumerate(actions, 1))
    if kind == "names":   # tool names only: the arguments must be worked out
        return "\n".join(f"{step_label(k)} {a.split()[0]}" for k, a in enumerate(actions, 1))
    if kind == "hint":    # a templated one-line summary
        last = next((a.split()[0] for a in actions if a.split()[0] in ("cancel", "return")), "respond")
        return f"start with {actions[0].split()[0]} ; then {last}"
    raise ValueError(f"unknown PI kind {kind!r}; expected one of {PI_KINDS}")


def system_prompt(pi_text=""):
    return SYSTEM_PROMPT + pi_block(pi_text)


class ToyShopEnv:
    """GEM-style API: reset(seed) -> (obs, info); step(text) -> (obs, reward, terminated, truncated, info)."""

    def __init__(self, split="train", max_turns=6, shortcut_frac=0.3):
        assert split in POOLS, f"split must be one of {list(POOLS)}"
        self.split, self.max_turns, self.shortcut_frac = split, max_turns, shortcut_frac
        self.task = None

    def reset(self, seed):
        self.task = make_task(seed, self.split, self.shortcut_frac)
        # writes: every cancel/return attempted (refused ones too); seen: order ids read in an observation
        self.turn, self.done, self.writes, self.answer, self.seen = 0, False, [], None, set()
        info = dict(system=system_prompt(), shortcut=self.task["shortcut"], kind=self.task["kind"])
        return REQUESTS[self.task["kind"]].format(**self.task), info

    def privileged_info(self, kind):
        return render_pi(self.task, kind)

    def demonstration(self):
        return frontier_demo(self.task)

    @staticmethod
    def statistics(episodes):
        """What the evaluation reports beside success: success on the shortcut tasks (whose PI starts with a step
        the student cannot reproduce) and on the others, how often a shortcut task's first action is the user
        lookup (the student's way) rather than the frontier's shortcut, and, on held-out tasks, the share of
        episodes whose actions name an entity of the training pool: memorised, never read in this task (a
        collapsing policy writes them). nan where there is nothing to count."""
        short = [e for e in episodes if e.info["shortcut"]]
        def rate(hits):
            return sum(hits) / len(hits) if hits else math.nan
        held_out = [e for e in episodes if e.split != "train"]
        return dict(shortcut=rate([e.reward for e in short]),
                    normal=rate([e.reward for e in episodes if not e.info["shortcut"]]),
                    lookup_first=rate([e.turns[0][0].split()[:1] == ["find_user"] for e in short]),
                    train_pool=rate([any(w in TRAIN_ENTITIES for text, _ in e.turns for w in text.split())
                                     for e in held_out]))

    def step(self, action_text):
        if self.task is None or self.done:
            raise RuntimeError("call reset() before step(), and again after the episode ends")
        self.turn += 1
        obs, terminated = self._act(parse_action(action_text))
        truncated = not terminated and self.turn >= self.max_turns
        self.done = terminated or truncated
        reward = float(self.done and self.success())
        return obs, reward, terminated, truncated, dict(turn=self.turn)

    def _act(self, parsed):
        if isinstance(parsed, str):  # parse error message
            return parsed, False
        tool, arg = parsed
        t = self.task
        if tool == "respond":
            self.answer = arg
            return "bye", True
        if tool == "find_user":
            return (f"user {t['uid']}" if arg == t["name"] else "error : no such user"), False
        if tool == "get_orders":
            uid, _, item = arg.partition(" ")
            if uid != t["uid"]:
                return "error : no such user", False
            shown = [f"{oid} {st} {it}" for oid, (st, it) in t["orders"].items() if item in ("", it)]
            if not shown:
                return f"error : no {item} order", False
            self.seen.update(line.split()[0] for line in shown)
            return "orders " + " , ".join(shown), False
        # cancel / return: every attempt counts (success() allows exactly one, the right one), refused or not
        self.writes.append((tool, arg, arg in self.seen))
        if arg not in t["orders"]:
            return "error : no such order", False
        status, item = t["orders"][arg]
        if status != {"cancel": "pending", "return": "delivered"}[tool]:
            return f"error : {arg} is {status}", False
        t["orders"][arg] = ({"cancel": "cancelled", "return": "returned"}[tool], item)  # the world changes
        return f"ok {tool} {arg}", False

    def success(self):
        t = self.task
        if t["kind"] == "status":
            # an answer counts only once the orders were looked up: a lucky guess is not a solution
            return bool(self.seen) and not self.writes and (self.answer or "").split() == [t["status"]]
        # one write, the right tool on the target, whose id was read in an observation (not guessed); then "done"
        return self.writes == [(t["kind"], t["target"], True)] and (self.answer or "").split() == ["done"]


def parse_action(text):
    """The action is the last non-empty line of the model's text (a reasoning line may come before it).
    Returns (tool, argument), or an error observation string for anything malformed."""
    if not isinstance(text, str):
        return "error : action must be text"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "error : empty action"
    if len(lines[-1]) > MAX_ACTION_CHARS:
        return "error : action too long"
    tool, _, arg = lines[-1].partition(" ")
    arg = arg.strip()
    if tool not in TOOLS:
        return "error : unknown tool"
    if tool == "get_orders" and not re.fullmatch(rf"{WORD}( {WORD})?", arg):
        return "error : get_orders takes a user id and an optional item"
    if tool not in ("respond", "get_orders") and not re.fullmatch(WORD, arg):
        return f"error : {tool} takes one word"
    return tool, arg


def noisy_episode(env, seed, rng, skill=0.0, answer_prob=0.4):
    """The warm-up's behaviour policy: with probability `skill` it takes the right next step, otherwise a
    random *grounded* action -- its decisions are noisy (tool order, early answers, a wrong but seen
    order), its arguments are always copied from what it has seen. Returns (request, [(action, obs)]).
    With skill 0 (a uniform choice among grounded actions) it solves about 3.5% of tasks, with 0.1 (the base
    model's warm-up) about 6.4% (see `python toy_env.py`)."""
    request, _ = env.reset(seed)
    t = env.task
    seen_uid, seen_orders, history, done = None, {}, [], False
    while not done:
        if seen_uid is None:
            right = f"find_user {t['name']}"
        elif not seen_orders:
            right = f"get_orders {seen_uid} {t['item']}"
        elif t["kind"] == "status":
            right = f"respond {seen_orders.get(t['target'], 'done')}"
        elif not env.writes:
            right = f"{t['kind']} {t['target']}"
        else:
            right = "respond done"
        moves = [f"find_user {t['name']}"]
        moves += [f"get_orders {seen_uid}", f"get_orders {seen_uid} {t['item']}"] if seen_uid else []
        moves += [f"{op} {oid}" for oid in seen_orders for op in ("cancel", "return")]
        answers = ["respond done"] + [f"respond {st}" for st in dict.fromkeys(seen_orders.values())]
        if rng.random() < skill:
            action = right
        else:  # a random grounded action; answering (which ends the episode) is the rarer mistake
            action = rng.choice(answers if rng.random() < answer_prob else moves)
        obs, _, term, trunc, _ = env.step(action)
        done = term or trunc
        if obs.startswith("user "):
            seen_uid = obs.split()[1]
        elif obs.startswith("orders "):
            seen_orders = {o.split()[0]: o.split()[1] for o in obs.removeprefix("orders ").split(" , ")}
        history.append((action, obs))
    return request, history


def success_rate(policy, split="train", n=2000, seed=0):
    """Fraction of n tasks solved by policy(env, task_seed, rng) -> anything (the env keeps the outcome)."""
    env, rng, wins = ToyShopEnv(split), random.Random(seed), 0
    for i in range(n):
        policy(env, i, rng)
        wins += env.success()
    return wins / n


def random_valid_policy(env, seed, rng):
    """Any tool with any argument from the split's pools: the floor a policy without grounding sits on."""
    env.reset(seed)
    pool, done = POOLS[env.split], False
    while not done:
        tool = rng.choice(TOOLS)
        arg = rng.choice({"find_user": pool["names"], "get_orders": pool["uids"], "respond": ["done", *STATUSES]}
                         .get(tool, pool["oids"]))
        done = any(env.step(f"{tool} {arg}")[2:4])


def frontier_policy(env, seed, rng):
    env.reset(seed)
    for _, action in env.demonstration():
        env.step(action)


if __name__ == "__main__":
    env = ToyShopEnv("train")
    for seed in (0, 1, 3):
        request, info = env.reset(seed)
        print(f"=== train task {seed}: {info['kind']}{'  (frontier shortcut)' if info['shortcut'] else ''}")
        for kind in PI_KINDS:
            print(f"--- teacher system prompt, PI = {kind}:\n{system_prompt(env.privileged_info(kind))}")
        print(f"--- student system prompt:\n{system_prompt()}\n--- user: {request}")
        for reasoning, action in env.demonstration():
            obs, reward, term, trunc, _ = env.step(action)
            print(f"    frontier thinks: {reasoning}\n    frontier acts  : {action}\n    tool           : {obs}")
        print(f"--- reward {reward}\n")
    test = ToyShopEnv("test")
    kinds = [make_task(i, "train")["kind"] for i in range(2000)]
    print("task mix (train):", {k: kinds.count(k) / len(kinds) for k in REQUESTS})
    print("frontier shortcut tasks (train):", sum(make_task(i)["shortcut"] for i in range(2000)) / 2000)
    for name, pol in [("frontier", frontier_policy), ("noisy behaviour, skill 0", noisy_episode),
                      ("noisy behaviour, skill 0.1 (base.py's warm-up)", lambda e, s, r: noisy_episode(e, s, r, 0.1)),
                      ("uniformly random valid action", random_valid_policy)]:
        print(f"success of {name}: train {success_rate(pol, 'train'):.3f}  test {success_rate(pol, 'test'):.3f}")
    for kind in ("none", *PI_KINDS):
        lengths = [len(system_prompt("" if kind == "none" else render_pi(make_task(i), kind))) for i in range(500)]
        print(f"system prompt length, PI={kind}: mean {sum(lengths) / len(lengths):.0f} chars")
