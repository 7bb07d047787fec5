"""
toy_env.py -- a tau-bench in miniature: a shop's customer-service desk with tools.

A customer asks for something (cancel an order, return an item, where is my order). The agent calls
tools, one per turn, and reads their output:

    find_user NAME    -> "user U37"                     (the customer's id; only a lookup reveals it)
    get_orders UID    -> "orders #12 pending lamp , #47 delivered mug"
    get_orders UID ITEM -> "orders #12 pending lamp"    (only the orders of that item)
    cancel OID        -> cancels a pending order        (a write)
    return OID        -> returns a delivered order      (a write)
    respond TEXT      -> answers the customer's request (the answer to the last one ends the episode)

Reward is 1 only for a solution, else 0: on cancel/return tasks exactly one write, the right one (the right
tool on the target order, an id the agent has read in an observation), then `respond done`; on status tasks
no write, the target order looked up, then `respond` with exactly its status. Any other write (a guessed or
unseen id, the wrong tool, a second write) and any other answer text ("pending shipped delivered", "done U33")
make the reward 0. Solving a task takes 3 correct calls whose arguments are copied from earlier observations
(name -> user id, item -> order id), then `respond`.

The horizon (--horizon, 1 to 3) is how many requests the customer makes, one after the other, as in tau-bench's
conversations: the agent's `respond` to one request brings the next ("thanks . where is my mug order ?") as
that call's output, and only the last `respond` ends the episode. Each request needs its own filtered lookup,
its write if it is a cancel or a return, and its own exact answer; the user lookup is needed once. So a
solution takes up to 3h + 1 calls and the turn limit grows by 3 per further request. Horizon 1 is the
single-request world. Each request taken alone is as easy as at horizon 1 (its item is in the customer's latest
message, its order id in the latest lookup): what grows is the chain of decisions an episode must get right.

A write changes the world: after `cancel #12`, get_orders lists #12 as cancelled. The item filter of
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
import itertools
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
MAX_HORIZON = 3  # a customer makes 1 to MAX_HORIZON requests in one episode (--horizon)
NEXT_REQUEST = "thanks ."  # what `respond` returns when the customer has a further request: this + the request
REQUESTS = {  # one sentence per request: the first after "i am {name} .", the next after NEXT_REQUEST
    "cancel": "please cancel my {item} order .",
    "return": "i want to return my {item} .",
    "status": "where is my {item} order ?",
}
OPS = ("cancel", "return")  # the writes
NEEDS = {"cancel": "pending", "return": "delivered"}  # the status an order needs for each write


def make_task(seed, split="train", shortcut_frac=0.3, horizon=1):
    """A task is a small hidden database (one customer, horizon + 1-2 orders) and `horizon` requests (asks), each
    naming one of them to cancel, return or report on. The first ask's fields are also the task's own (kind,
    target, item, status): at horizon 1, the only ask."""
    if not 1 <= horizon <= MAX_HORIZON:
        raise ValueError(f"horizon={horizon}: allowed 1 to {MAX_HORIZON}")
    rng = random.Random(f"{split}:{seed}")  # string seeds are stable across Python runs
    pool = POOLS[split]
    kinds = [rng.choice(("cancel", "return", "status")) for _ in range(horizon)]
    n_orders = horizon + rng.choice((1, 2))
    items = rng.sample(pool["items"], n_orders)
    statuses = [rng.choice(STATUSES) for _ in range(n_orders)]
    for i, kind in enumerate(kinds):  # orders 0 .. horizon-1 are the targets
        statuses[i] = NEEDS.get(kind, statuses[i])
    orders = dict(zip(rng.sample(pool["oids"], n_orders), zip(statuses, items)))
    asks = [dict(kind=kind, target=oid, item=orders[oid][1], status=orders[oid][0]) for kind, oid in zip(kinds, orders)]
    order_list = list(orders.items())
    rng.shuffle(order_list)  # the targets are not always listed first
    return dict(split=split, seed=seed, horizon=horizon, asks=asks, **asks[0], name=rng.choice(pool["names"]),
                uid=rng.choice(pool["uids"]), orders=dict(order_list), shortcut=rng.random() < shortcut_frac)


def request_text(task, k=0):
    """The customer's k-th request: the episode's first message, or what `respond` returns before the next one."""
    opening = f"i am {task['name']} ." if k == 0 else NEXT_REQUEST
    return f"{opening} {REQUESTS[task['asks'][k]['kind']].format(**task['asks'][k])}"


def answer(ask):
    """The exact reply that closes a request: the order's status when asked where it is, else "done"."""
    return ask["status"] if ask["kind"] == "status" else "done"


def frontier_demo(task):
    """The frontier agent's solution: a list of (reasoning, action). It never fails; in shortcut tasks it
    skips the lookup because it reads the hidden database (a step the student cannot reproduce)."""
    name, uid = task["name"], task["uid"]
    steps = [] if task["shortcut"] else [(f"the customer is {name} ; i look up the id", f"find_user {name}")]
    for k, ask in enumerate(task["asks"]):
        oid, item, status, op = ask["target"], ask["item"], ask["status"], ask["kind"]
        known = f"i already know {name} is" if task["shortcut"] and k == 0 else f"{name} is"
        steps.append((f"{known} {uid} ; i list the {item} orders", f"get_orders {uid} {item}"))
        if op in OPS:
            steps.append((f"the {item} order is {oid} and {status} ; i {op} it", f"{op} {oid}"))
        reasoning = (f"the {item} order {oid} is {status} ; i tell the customer" if op == "status" else
                     f"the {item} order is done ; i tell the customer")
        steps.append((reasoning, f"respond {answer(ask)}"))
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

    def __init__(self, split="train", max_turns=6, shortcut_frac=0.3, horizon=1):
        """max_turns is the turn limit at horizon 1: each further order adds two turns (its lookup and its write)."""
        assert split in POOLS, f"split must be one of {list(POOLS)}"
        self.split, self.shortcut_frac, self.horizon = split, shortcut_frac, horizon
        self.max_turns = turn_limit(max_turns, horizon)
        self.task = None

    def reset(self, seed):
        self.task = make_task(seed, self.split, self.shortcut_frac, self.horizon)
        # writes: every cancel/return attempted (refused ones too); seen: order ids read in an observation;
        # closed: for each request answered so far, whether it was solved when the agent answered it;
        # opened: how many writes had been made when the current request came (its own writes follow)
        self.turn, self.done, self.writes, self.seen, self.closed, self.opened = 0, False, [], set(), [], 0
        info = dict(system=system_prompt(), shortcut=self.task["shortcut"], kind=self.task["kind"])
        return request_text(self.task), info

    def privileged_info(self, kind):
        return render_pi(self.task, kind)

    def demonstration(self):
        return frontier_demo(self.task)

    def statistics(self, episodes):
        """What the evaluation reports beside success: success on the shortcut tasks (whose PI starts with a step
        the student cannot reproduce) and on the others; the share of requests of each kind (cancel, return,
        status) solved when answered, so a curve shows which kinds a policy learns; how often a shortcut task's
        first action is the user lookup (the student's way) rather than the frontier's shortcut; and, on held-out
        tasks, the share of episodes whose actions name an entity of the training pool: memorised, never read in
        this task (a collapsing policy writes them). nan where there is nothing to count."""
        short = [e for e in episodes if e.info["shortcut"]]
        def rate(hits):
            return sum(hits) / len(hits) if hits else math.nan
        solved = {kind: [] for kind in REQUESTS}
        replay = ToyShopEnv(horizon=self.horizon, max_turns=10**6)  # the asks do not depend on shortcut_frac
        for e in episodes:
            replay.split = e.split
            replay.reset(e.seed)
            for text, _ in e.turns:
                if not replay.done:
                    replay.step(text)
            for ask, ok in itertools.zip_longest(replay.task["asks"], replay.closed, fillvalue=False):
                solved[ask["kind"]].append(ok)
        held_out = [e for e in episodes if e.split != "train"]
        return dict(shortcut=rate([e.reward for e in short]),
                    normal=rate([e.reward for e in episodes if not e.info["shortcut"]]),
                    **{kind: rate(hits) for kind, hits in solved.items()},
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
            ask = t["asks"][len(self.closed)]
            # its write made while it was open: a write ahead of the request it answers is a guess (or a peek at PI)
            write_done = ask["kind"] not in OPS or (ask["kind"], ask["target"], True) in self.writes[self.opened:]
            self.opened = len(self.writes)
            # a status counts only if the order itself was read: a lucky guess is not a solution
            self.closed.append(write_done and ask["target"] in self.seen and arg.split() == answer(ask).split())
            if len(self.closed) == len(t["asks"]):
                return "bye", True
            return request_text(t, len(self.closed)), False
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
        # cancel / return: every attempt counts (success() allows exactly one per order asked), refused or not
        self.writes.append((tool, arg, arg in self.seen))
        if arg not in t["orders"]:
            return "error : no such order", False
        status, item = t["orders"][arg]
        if status != NEEDS[tool]:
            return f"error : {arg} is {status}", False
        t["orders"][arg] = ({"cancel": "cancelled", "return": "returned"}[tool], item)  # the world changes
        return f"ok {tool} {arg}", False

    def success(self):
        """Every request answered exactly, each when it was solved: its order looked up, its write done (the right
        tool on its order, an id read in an observation, not guessed); and no other write, nor any write twice."""
        wanted = sorted((a["kind"], a["target"], True) for a in self.task["asks"] if a["kind"] in OPS)
        return len(self.closed) == len(self.task["asks"]) and all(self.closed) and sorted(self.writes) == wanted


def make(split, cfg):
    """--env=toy: the factory agent.make_env calls, as it calls a user's."""
    return ToyShopEnv(split, max_turns=cfg.max_turns, shortcut_frac=cfg.shortcut_frac, horizon=cfg.horizon)


def turn_limit(max_turns, horizon):
    """The turn limit grows with the task: three more turns per further request (lookup, write, answer)."""
    return max_turns + 3 * (horizon - 1)


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
    order), its arguments are always copied from what it has seen for the current request: the item of the
    customer's latest message, an order id read since it. Returns (request, [(action, obs)]).
    How often it succeeds at each skill and horizon: `python toy_env.py` (docs/toy_world.md has the figures)."""
    request, _ = env.reset(seed)
    t = env.task
    seen_uid, seen_orders, history, done = None, {}, [], False
    while not done:
        ask = t["asks"][len(env.closed)]
        if seen_uid is None:
            right = f"find_user {t['name']}"
        elif ask["target"] not in seen_orders:
            right = f"get_orders {seen_uid} {ask['item']}"
        elif ask["kind"] in OPS and (ask["kind"], ask["target"]) not in [(tool, oid) for tool, oid, _ in env.writes]:
            right = f"{ask['kind']} {ask['target']}"
        else:
            right = f"respond {seen_orders[ask['target']] if ask['kind'] == 'status' else 'done'}"
        moves = [f"find_user {t['name']}"]
        moves += [f"get_orders {seen_uid}", f"get_orders {seen_uid} {ask['item']}"] if seen_uid else []
        moves += [f"{op} {oid}" for oid in seen_orders for op in OPS]
        answers = ["respond done"] + [f"respond {st}" for st in dict.fromkeys(seen_orders.values())]
        if rng.random() < skill:
            action = right
        else:  # a random grounded action; answering (which closes the request) is the rarer mistake
            action = rng.choice(answers if rng.random() < answer_prob else moves)
        obs, _, term, trunc, _ = env.step(action)
        done = term or trunc
        if obs.startswith("user "):
            seen_uid = obs.split()[1]
        elif obs.startswith("orders "):
            seen_orders |= {o.split()[0]: o.split()[1] for o in obs.removeprefix("orders ").split(" , ")}
        elif action.startswith("respond"):
            seen_orders = {}  # the next request starts: its arguments come from what is read from now on
        history.append((action, obs))
    return request, history


def success_rate(policy, split="train", n=2000, seed=0, horizon=1):
    """Fraction of n tasks solved by policy(env, task_seed, rng) -> anything (the env keeps the outcome)."""
    env, rng, wins = ToyShopEnv(split, horizon=horizon), random.Random(seed), 0
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


if __name__ == "__main__":  # python toy_env.py [--horizon=H]: tasks at horizon H (default: 1 and 3), then statistics
    import sys
    shown = [arg.removeprefix("--horizon=") for arg in sys.argv[1:]]
    if shown and (len(shown) > 1 or shown[0] not in [str(h) for h in range(1, MAX_HORIZON + 1)]):
        raise SystemExit(f"usage: python toy_env.py [--horizon=1..{MAX_HORIZON}]")
    for horizon, seeds in [(int(shown[0]), (0, 1))] if shown else ((1, (0, 1, 3)), (3, (0,))):
        env = ToyShopEnv("train", horizon=horizon)
        for seed in seeds:
            request, info = env.reset(seed)
            print(f"=== train task {seed}, horizon {horizon}: {' + '.join(a['kind'] for a in env.task['asks'])}"
                  f"{'  (frontier shortcut)' if info['shortcut'] else ''}")
            for kind in PI_KINDS:
                print(f"--- teacher system prompt, PI = {kind}:\n{system_prompt(env.privileged_info(kind))}")
            print(f"--- student system prompt:\n{system_prompt()}\n--- user: {request}")
            for reasoning, action in env.demonstration():
                obs, reward, term, trunc, _ = env.step(action)
                print(f"    frontier thinks: {reasoning}\n    frontier acts  : {action}\n    tool           : {obs}")
            print(f"--- reward {reward}\n")
    kinds = [a["kind"] for i in range(2000) for a in make_task(i, "train", horizon=MAX_HORIZON)["asks"]]
    print("ask mix (train):", {k: round(kinds.count(k) / len(kinds), 3) for k in REQUESTS})
    print("frontier shortcut tasks (train):", sum(make_task(i)["shortcut"] for i in range(2000)) / 2000)
    for horizon in range(1, MAX_HORIZON + 1):
        print(f"horizon {horizon} (turn limit {turn_limit(6, horizon)}):")
        for name, pol in [("frontier", frontier_policy), ("noisy behaviour, skill 0", noisy_episode),
                          ("noisy behaviour, skill 0.1 (base.py's warm-up)", lambda e, s, r: noisy_episode(e, s, r, 0.1)),
                          ("uniformly random valid action", random_valid_policy)]:
            print(f"  success of {name}: train {success_rate(pol, 'train', horizon=horizon):.3f}  "
                  f"test {success_rate(pol, 'test', horizon=horizon):.3f}")
        for kind in ("none", *PI_KINDS):
            lengths = [len(system_prompt("" if kind == "none" else render_pi(make_task(i, horizon=horizon), kind)))
                       for i in range(500)]
            print(f"  system prompt length, PI={kind}: mean {sum(lengths) / len(lengths):.0f} chars")
