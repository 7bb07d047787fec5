"""
trl_trainers.py -- π-Distill and OPSD as TRL trainers, for when one GPU is not enough: `trl.GRPOTrainer` subclasses
that keep this project's pure losses (pi_distill.pi_distill_loss, opsd.opsd_loss), its multi-turn rollouts and
environments (agent.rollout: the toy world, GEM games, a module:factory of yours) and its config names, and hand
the rest to TRL and accelerate: data parallelism (DDP, DeepSpeed ZeRO, FSDP), checkpoints, logging.

    python trl_trainers.py pi_distill --model=path/or/hf-name --rounds=100            # one process
    torchrun --nproc_per_node 2 trl_trainers.py opsd --model=path/or/hf-name          # two, on CPU too (gloo)
    accelerate launch --config_file <trl>/accelerate_configs/multi_gpu.yaml --num_processes 8 \
        trl_trainers.py pi_distill --model=Qwen/Qwen3-0.6B --env=gem:game:TowerofHanoi-v0-easy ...

The flags are those of pi_distill.py and opsd.py (`--help` lists them). One native round is one TRL generation
batch, tasks_per_round x group_size episodes over all ranks, and updates_per_round optimizer steps on it (TRL's
num_iterations). Where each piece goes in GRPOTrainer (trl 1.16; these are private methods, hence the pin):
- rollout_func (TRL's hook for custom rollouts) plays each rank's episodes with agent.rollout in the sampling view
  (π-Distill: the teacher, the PI block in its system prompt; OPSD: the student) and scores them in both views
  for the shaped reward, which TRL centres per group into the advantage (scale_rewards="none": the paper only
  centres, PAPER.md §3);
- _generate_and_score_completions adds what the loss needs besides TRL's tensors (the other view's prompt, the
  mask of the groups kept, the environment's reward), batch-first, so that it survives TRL's shuffle and split;
- _compute_loss scores the completion in both views and calls the project's loss, normalised by the model tokens
  of the whole round on all ranks, as the native loop (TRL's loss_type="dapo").
docs/scaling_out.md has the commands, what is tested and what is not.
"""
import copy
import dataclasses
import hashlib
import json
import os
import random
import sys

import torch
import torch.nn.functional as F
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig, GRPOTrainer

import agent
import base
import config
import opsd
import pi_distill
import rl
import run as runs
from env_api import PI_KINDS, check_env

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental in trl 1.16


def score(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature):
    """agent.score for TRL's tensors: logits [B, C, V] / temperature and log-probs [B, C] of the completion tokens
    after a left-padded prompt. Position ids count real tokens only, as in the native loop."""
    ids, attn = torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1)
    with agent.autocast(ids.device):
        logits = agent.forward(model, ids, attn, use_cache=False).logits
    logits = logits[:, prompt_ids.shape[1] - 1:-1].float() / temperature  # position p predicts token p + 1
    return logits, F.log_softmax(logits, -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


def pad_left(rows, value, device):
    ids, mask = agent.pad_left(rows, value)
    return ids.to(device), mask.to(device)


REFUSED = dict(  # GRPOConfig options whose effect the losses here would silently drop
    loss_type=("dapo",), scale_rewards=("none",), beta=(0.0,), use_vllm=(False,), mask_truncated_completions=(False,),
    top_entropy_quantile=(1.0,), entropy_coef=(0.0,), off_policy_mask_threshold=(None,), delta=(None,),
    importance_sampling_level=("token",), multi_objective_aggregation=("sum_then_normalize",))


class TwoViewTrainer(GRPOTrainer):
    """What both algorithms share: the config, the dataset of tasks, the rollout in one view, the other view's
    prompt, the teacher (live, frozen or EMA), the mask of kept groups, the per-round line and the held-out
    evaluation. Subclasses say which view samples, the shaped reward, which groups are kept, and the loss."""
    samples_with_pi = None  # True: the teacher view samples (π-Distill); False: the student (OPSD)
    updates_per_round = 1   # optimizer steps on each round's episodes (TRL's num_iterations)

    def __init__(self, cfg, args=None):
        if not cfg.model:
            raise SystemExit("trl_trainers.py needs --model=<Hugging Face name or local folder>: TRL takes a Hugging "
                             "Face tokenizer, and the built-in tiny model's is tiktoken (use pi_distill.py for it)")
        if cfg.device not in ("auto", "cpu"):
            raise SystemExit(f"--device={cfg.device}: with TRL, accelerate places each rank (choose GPUs with "
                             "CUDA_VISIBLE_DEVICES); allowed auto | cpu")
        if cfg.resume and cfg.teacher == "ema":
            raise SystemExit("--resume with --teacher=ema: TRL's checkpoint does not hold the EMA teacher")
        if cfg.rounds == 0:
            raise SystemExit("--rounds=0: TRL trains at least one round (to evaluate a model alone, use pi_distill.py "
                             "or opsd.py with --rounds=0)")
        self.cfg = cfg
        check_env(agent.environments(cfg, "train", 1)[0], PI_KINDS if cfg.base_stats else (cfg.pi_kind,))
        self.claim_out_dir(cfg)
        args = args or self.make_args(cfg)
        wrong = [f"{k}={getattr(args, k)!r} (allowed {v})" for k, v in REFUSED.items() if getattr(args, k) not in v]
        if wrong:
            raise ValueError("GRPOConfig options these trainers would ignore: " + ", ".join(wrong))
        model, self.tok = base.load_base(cfg, torch.device("cpu"))  # the Trainer moves it to its rank's device
        super().__init__(model=model, reward_funcs=[self.shaped_reward], args=args,
                         train_dataset=self.task_dataset(cfg), processing_class=self.tok.hf,
                         rollout_func=lambda prompts, trainer: trainer.play(prompts))
        self.teacher = None  # None: the teacher is the trained model's PI view (live); else a copy
        if cfg.teacher != "live":
            self.teacher = copy.deepcopy(self.accelerator.unwrap_model(self.model)).requires_grad_(False)
        self.round, self.episodes = 0, []  # rounds done; the rank's episodes of the round being trained
        self.round_has_signal = True  # whether any group of the round being trained was kept
        self.metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
        self.evaluated = set()  # rounds whose evaluation metrics.jsonl holds
        if self.accelerator.is_main_process:
            self.keep_records_up_to(self.resumed_round() if cfg.resume else -1)
            with open(os.path.join(cfg.out_dir, RUN_CONFIG), "w") as f:  # what a --resume is checked against
                json.dump(dict(config_class=type(cfg).__name__, config=dataclasses.asdict(cfg)), f, indent=1)

    def claim_out_dir(self, cfg):
        """As the native scripts: a used out_dir is refused (or moved aside by rank 0 with --overwrite); a resumed
        one must hold this script's run with this config (config.json), and a last checkpoint that can be read."""
        held = [name for name in os.listdir(cfg.out_dir) if name.startswith("checkpoint-")] \
            if os.path.isdir(cfg.out_dir) else []
        if int(os.environ.get("RANK", 0)) != 0:  # rank 0 checks and claims the folder for all
            return
        runs.claim_out_dir(cfg, runs.RUN_FILES + (RUN_CONFIG, "model.safetensors", *held))
        saved = os.path.join(cfg.out_dir, RUN_CONFIG)
        if cfg.resume:
            checkpoint = self.resumed_round_folder()
            if not os.path.exists(saved):
                raise SystemExit(f"--resume=True but {saved} is missing: {cfg.out_dir} holds no run of trl_trainers.py")
            try:
                saved_run = json.load(open(saved))
            except (OSError, json.JSONDecodeError) as err:
                raise SystemExit(f"{saved}: cannot be read ({err}); {runs.NEW_RUN}") from None
            runs.refuse_another_run(saved, saved_run.get("config_class"), saved_run.get("config", {}), cfg)
            check_checkpoint(checkpoint)

    def resumed_round_folder(self):
        checkpoint = get_last_checkpoint(self.cfg.out_dir)
        if checkpoint is None:
            raise SystemExit(f"--resume=True but {self.cfg.out_dir} holds no checkpoint-N folder")
        return checkpoint

    def resumed_round(self):
        return int(self.resumed_round_folder().rsplit("-", 1)[1]) // self.updates_per_round

    def keep_records_up_to(self, last_round):
        """metrics.jsonl without the records after the checkpoint the run resumes from (all of them, for a new run),
        rewritten atomically."""
        records = [r for r in runs.read_metrics(self.metrics_path) if r["round"] <= last_round]
        with open(self.metrics_path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(self.metrics_path + ".tmp", self.metrics_path)
        self.evaluated = {r["round"] for r in records if r.get("eval")}

    def make_args(self, cfg):
        """GRPOConfig from the project's config: a round is one generation batch of tasks_per_round x group_size
        episodes over all ranks, micro_batch episodes per forward/backward on each."""
        n_ranks = ranks(cfg)
        episodes = cfg.tasks_per_round * cfg.group_size
        if episodes % n_ranks:
            raise SystemExit(f"--tasks_per_round={cfg.tasks_per_round} x --group_size={cfg.group_size} = {episodes} "
                             f"episodes per round do not split over {n_ranks} ranks")
        per_rank = episodes // n_ranks
        micro = min(cfg.micro_batch or per_rank, per_rank)
        if per_rank % micro:
            raise SystemExit(f"--micro_batch={cfg.micro_batch} does not divide the {per_rank} episodes of each rank")
        accumulate = per_rank // micro
        schedule = dict(lr_scheduler_type="constant") if cfg.lr_schedule == "constant" else \
            dict(lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs=dict(min_lr_rate=0.1))
        return GRPOConfig(
            output_dir=cfg.out_dir, seed=cfg.seed, use_cpu=on_cpu(cfg), bf16=not on_cpu(cfg),
            per_device_train_batch_size=micro, gradient_accumulation_steps=accumulate, steps_per_generation=accumulate,
            num_generations=cfg.group_size, num_iterations=self.updates_per_round,
            max_steps=cfg.rounds * self.updates_per_round, learning_rate=cfg.lr, weight_decay=0.0, max_grad_norm=1.0,
            warmup_steps=0, **schedule, loss_type="dapo", scale_rewards="none", beta=0.0, epsilon=cfg.clip_eps,
            temperature=cfg.temperature, activation_checkpointing=cfg.grad_checkpoint, logging_steps=1,
            report_to="none", save_strategy="steps", save_steps=cfg.eval_every * self.updates_per_round,
            disable_tqdm=True)

    @staticmethod
    def task_dataset(cfg):
        """One row per task of the run: "train <seed>", drawn as the native Run draws them (TRL repeats each row
        group_size times and shuffles the rows with --seed)."""
        rng = random.Random(cfg.seed)
        return Dataset.from_dict(dict(prompt=[f"train {rng.randrange(agent.VAL_SEEDS)}"
                                              for _ in range(cfg.rounds * cfg.tasks_per_round)]))

    # --- 1. sample (TRL's rollout_func), 2-4. score both views and shape the reward
    def play(self, prompts):
        """The rank's episodes of this round, played with agent.rollout in the sampling view, as TRL's rollout_func
        output: that view's prompt ids, the continuation, its behaviour log-probs and env_mask (1 on the tokens
        the model wrote), plus the other view's prompt ids and the per-episode rewards."""
        cfg, model = self.cfg, self.accelerator.unwrap_model(self.model)
        tasks = [(split, int(seed)) for split, seed in (p.split() for p in prompts)]
        sampler = self.teacher_of(model) if self.samples_with_pi else model
        # the sampled tokens are seeded by (seed, round, rank): a resumed run samples what an uninterrupted one would
        rank = self.accelerator.process_index
        generator = torch.Generator().manual_seed((cfg.seed * 100_000 + self.round) * 1000 + rank)
        self.episodes = agent.rollout(sampler, self.tok, cfg, tasks, with_pi=self.samples_with_pi, generator=generator)
        def prompt(e, with_pi):
            return self.tok.prompt(e.system, e.request, e.pi if with_pi else "")
        rewards = self.rewards(self.episodes)
        return dict(prompt_ids=[prompt(e, self.samples_with_pi) for e in self.episodes],
                    completion_ids=[e.tokens for e in self.episodes], logprobs=[e.logp for e in self.episodes],
                    env_mask=[e.mask for e in self.episodes],
                    other_prompt_ids=[prompt(e, not self.samples_with_pi) for e in self.episodes],
                    **{k: v.tolist() for k, v in rewards.items()})

    @staticmethod
    def shaped_reward(prompts, completions, shaped, **kwargs):
        return shaped  # computed in play() from both views' logits; TRL turns it into A = shaped − group mean

    def teacher_of(self, model):
        return model if self.teacher is None else self.teacher

    def both_views(self, episodes):
        """(teacher logits, student logits, mask) of the episodes at the current weights, no gradient."""
        model, device = self.accelerator.unwrap_model(self.model), self.accelerator.device
        _, mask, _ = agent.batch_continuations(episodes, device)
        with torch.no_grad():
            logits_T, logp_T = agent.score(self.teacher_of(model), self.tok, episodes, "teacher", self.cfg.temperature)
            logits_S, logp_S = agent.score(model, self.tok, episodes, "student", self.cfg.temperature)
        return (logits_T, logp_T), (logits_S, logp_S), mask

    def _generate_and_score_completions(self, inputs):
        self.round = self.state.global_step // self.updates_per_round  # rounds done (also after a resume)
        if self.cfg.teacher == "ema" and self.round > 0:  # the native loop updates it after each round's steps
            rl.ema_update(self.teacher, self.accelerator.unwrap_model(self.model), self.cfg.ema_decay)
        due = self.round % self.cfg.eval_every == 0 and self.round not in self.evaluated
        if due and self.accelerator.is_main_process:
            self.evaluate()
        out = super()._generate_and_score_completions(inputs)  # calls play(); advantages = shaped − group mean
        device, n = self.accelerator.device, len(inputs)
        out["other_prompt_ids"], out["other_prompt_mask"] = pad_left([x["other_prompt_ids"] for x in inputs],
                                                                      self.tok.pad, device)
        if "logp_student_old" in inputs[0]:  # padded like TRL's completions: to the longest of the rank's episodes
            out["logp_student_old"] = torch.tensor([x["logp_student_old"] for x in inputs], device=device)
        logged = [k for k in ("env_reward", "kl_seq") if k in inputs[0]]
        values = torch.tensor([[x[k] for k in logged] for x in inputs], device=device)
        # which groups are kept needs each whole group, and a group may straddle two ranks: decide on the gathered batch
        everything = self.accelerator.gather(torch.cat([out["advantages"].unsqueeze(1), values], 1))
        keep = self.kept_groups(everything[:, 1], everything[:, 0])
        self.round_has_signal = self.has_signal(keep)  # the same on every rank: decided on the gathered round
        rank = self.accelerator.process_index
        out["keep"] = keep[rank * n:(rank + 1) * n]
        out["num_items_in_batch"] = self.accelerator.gather(self.loss_mask(out).sum()).sum()
        out["num_written_in_batch"] = self.accelerator.gather(self.written_mask(out).sum()).sum()
        record = dict(round=self.round + 1, **{k: everything[:, 1 + i].mean().item() for i, k in enumerate(logged)},
                      groups=keep.float().mean().item(), episodes=len(keep), tokens=int(out["num_items_in_batch"]))
        if self.accelerator.is_main_process:  # one line and one metrics.jsonl record per round, of all ranks
            self.write(record)
            print(f"round {record['round']:4d} | " + " | ".join(f"{k} {v:.3g}" for k, v in list(record.items())[1:]),
                  flush=True)
        return out

    def has_signal(self, keep):
        """Whether the round's loss learns anything: some group kept."""
        return bool(keep.any())

    def create_optimizer(self, model=None):
        """TRL's optimizer, whose step does nothing in a round without a kept group, as the native loop takes none
        (with a zero gradient Adam's momentum would still move the weights)."""
        optimizer = super().create_optimizer(model)
        step = optimizer.step
        def step_if_the_round_has_signal(*args, **kwargs):
            if self.round_has_signal:
                return step(*args, **kwargs)
        optimizer.step = step_if_the_round_has_signal
        return optimizer

    def write(self, record):
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    # --- 5. the loss (TRL calls this per micro-batch; the optimizer steps after each round's accumulation)
    def token_normaliser(self, inputs, count="num_items_in_batch"):
        """The loss is a sum over the micro-batch's tokens divided by the round's tokens on all ranks (the kept
        episodes' or, with count="num_written_in_batch", every episode's): DDP averages the ranks' gradients (hence
        × ranks) and the micro-batches of a step are summed (as TRL's dapo)."""
        steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        return inputs[count].clamp(min=1) / self.accelerator.num_processes * steps / self.args.steps_per_generation

    def written_mask(self, inputs):  # the model's tokens of every episode
        return inputs["completion_mask"] * inputs["tool_mask"]

    def loss_mask(self, inputs):  # ... of the kept groups' episodes
        return self.written_mask(inputs) * inputs["keep"].unsqueeze(1)

    def scaled(self, loss, stats, logits_S, mask, inputs):
        """The micro-batch's loss (a mean over its tokens) weighted by its share of the round's tokens; its statistics
        and the student's entropy go to TRL's logged metrics as token-weighted means over all ranks."""
        n = mask.sum()
        stats = dict(stats, entropy_S=rl.mean_entropy(logits_S, mask))
        for key, value in stats.items():
            if value != value:  # nan: a statistic this form of the loss does not have (OPSD's kl without kl_tokens)
                continue
            local = torch.stack([torch.tensor(value, device=n.device) * n, n]).float()
            total, count = self.accelerator.reduce(local, reduction="sum")
            self._metrics["train"][key].append((total / count.clamp(min=1)).item())
        return loss * n / self.token_normaliser(inputs)

    # --- evaluation, and the end of a run
    def evaluate(self):
        """The native scripts' held-out student success (eval_tasks test tasks), on the main rank."""
        model = self.accelerator.unwrap_model(self.model)
        if self.round == 0 and self.cfg.base_stats:  # the paper's premise, as the native scripts print it
            agent.print_base_statistics(agent.base_statistics(model, self.tok, self.cfg), self.cfg)
        result = agent.evaluate(model, self.tok, self.cfg, "student")
        record = dict(round=self.round, eval=True, student=result["success"], **agent.prefixed("student", result))
        self.write(record)
        self.evaluated.add(self.round)
        print(f"eval round {self.round:4d} | held-out student {result['success']:.3f}", flush=True)
        return record

    def finish(self):
        """The last evaluation and the model (main rank), and a check that every rank holds the same parameters."""
        digest = hashlib.sha256()
        for p in self.accelerator.unwrap_model(self.model).parameters():
            digest.update(p.detach().float().cpu().numpy().tobytes())
        digests = gather_object([digest.hexdigest()])
        if len(set(digests)) != 1:
            raise RuntimeError(f"the ranks' parameters differ after training: {digests}")
        if self.accelerator.is_main_process:
            print(f"parameters equal on all {len(digests)} ranks (sha256 {digests[0][:12]})")
            self.round = self.state.global_step // self.updates_per_round
            if self.round not in self.evaluated:
                self.evaluate()
            self.save_model(self.cfg.out_dir)


RUN_CONFIG = "run_config.json"  # the run's config (config.json is the saved model's own)


def check_checkpoint(folder):
    """Reads a TRL checkpoint's files before TRL does, so a truncated one stops the run in one line."""
    from safetensors.torch import load_file
    try:
        json.load(open(os.path.join(folder, "trainer_state.json")))
        load_file(os.path.join(folder, "model.safetensors"))
        for name in ("optimizer.pt", "scheduler.pt"):
            if os.path.exists(os.path.join(folder, name)):
                torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True)
    except Exception as err:  # what each reader raises on a torn file differs: json, safetensors, torch
        raise SystemExit(f"{folder}: cannot be read ({type(err).__name__}: {str(err)[:120]}); delete that folder to "
                         "resume from the checkpoint before it, or start anew in another --out_dir") from None


def on_cpu(cfg):
    return cfg.device == "cpu" or not torch.cuda.is_available()


def ranks(cfg):
    """How many processes the launcher started (torchrun or accelerate launch; on CPU they talk over gloo)."""
    return PartialState(cpu=on_cpu(cfg)).num_processes


class PiDistillTrainer(TwoViewTrainer):
    """π-Distill (Algorithm 1): the teacher view samples; loss α·L_T + (1 − α)·L_S, pi_distill.pi_distill_loss."""
    samples_with_pi = True

    def __init__(self, cfg, args=None):
        self.updates_per_round = cfg.updates_per_round
        super().__init__(cfg, args)

    def rewards(self, episodes):
        """R − leak penalty, and the shaped reward R − β·KL_seq (the exact KL(π_T ‖ π_S) at the written tokens)."""
        cfg = self.cfg
        R = torch.tensor([e.reward - cfg.leak_penalty * pi_distill.leaks(e) for e in episodes])
        (logits_T, _), (logits_S, logp_S), mask = self.both_views(episodes)
        kl = rl.kl_per_episode(logits_T, logits_S, mask).cpu()
        kl_seq = kl if cfg.kl_sum else kl / mask.sum(1).clamp(min=1).cpu()
        out = dict(env_reward=R, kl_seq=kl_seq, shaped=R - cfg.beta * kl_seq)
        if cfg.student_trust_region:  # log π_S,old of every continuation token, [B, L]
            out["logp_student_old"] = logp_S.cpu()
        return out

    def kept_groups(self, rewards, advantages):  # over the gathered round
        return pi_distill.kept_groups(rewards, advantages, self.cfg)

    def has_signal(self, keep):  # the student's forward KL learns from every episode, kept or not
        return super().has_signal(keep) or self.cfg.forward_kl_coef > 0

    def _compute_loss(self, model, inputs):
        cfg = self.cfg
        alpha = pi_distill.annealed_alpha(cfg, self.round)  # self.round: the round these samples came from
        completion = inputs["completion_ids"], inputs["completion_mask"]
        teacher_prompt = inputs["prompt_ids"], inputs["prompt_mask"]
        student_prompt = inputs["other_prompt_ids"], inputs["other_prompt_mask"]
        if alpha > 0:  # both views need gradients: one forward through the (possibly DDP-wrapped) model
            width = max(teacher_prompt[0].shape[1], student_prompt[0].shape[1])
            ids, attn = (torch.cat([F.pad(t, (width - t.shape[1], 0)), F.pad(s, (width - s.shape[1], 0))])
                         for t, s in zip(teacher_prompt, student_prompt))
            logits, logp = score(model, ids, attn, *(torch.cat([c, c]) for c in completion), cfg.temperature)
            (logits_T, logits_S), (logp_T, logp_S) = logits.chunk(2), logp.chunk(2)
        else:  # at α = 0 the teacher enters only as sg π_T
            with torch.no_grad():
                logits_T, logp_T = score(self.teacher_of(model), *teacher_prompt, *completion, cfg.temperature)
            logits_S, logp_S = score(model, *student_prompt, *completion, cfg.temperature)
        mask = self.loss_mask(inputs)
        loss, stats = pi_distill.pi_distill_loss(logp_T, inputs["sampling_per_token_logps"], logp_S,
                                                 inputs["advantages"], mask, alpha, cfg.clip_eps, cfg.ratio_cap,
                                                 inputs["logp_student_old"] if cfg.student_trust_region else None)
        loss = self.scaled(loss, stats, logits_S, mask, inputs)
        if cfg.forward_kl_coef:  # on every episode's tokens, kept or not, as the native loop
            forward_kl = pi_distill.student_forward_kl(rl.kl_per_position(logits_T.detach(), logits_S),
                                                       self.written_mask(inputs),
                                                       self.token_normaliser(inputs, "num_written_in_batch"))
            loss = loss + (1 - alpha) * cfg.forward_kl_coef * forward_kl
        return loss


class OPSDTrainer(TwoViewTrainer):
    """OPSD (Algorithm 2): the student view samples; clipped GRPO plus β·KL(π_S ‖ sg π_T) (opsd.opsd_loss)."""
    samples_with_pi = False

    def rewards(self, episodes):
        """R, and with --kl_estimator=reward the shaped R − β·Σ_t sg(log π_S − log π_T) over the written tokens."""
        cfg = self.cfg
        R = torch.tensor([e.reward for e in episodes])
        shaped = R
        if cfg.kl_estimator == "reward":
            (_, logp_T), (_, logp_S), mask = self.both_views(episodes)
            shaped = R - cfg.beta * ((logp_S - logp_T) * mask).sum(1).cpu()
        return dict(env_reward=R, shaped=shaped)

    def kept_groups(self, rewards, advantages):  # over the gathered round
        return opsd.kept_groups(rewards, self.cfg)

    def _compute_loss(self, model, inputs):
        cfg = self.cfg
        completion = inputs["completion_ids"], inputs["completion_mask"]
        with torch.no_grad():  # sg π_T: the teacher view only scores the student's tokens
            logits_T, logp_T = score(self.teacher_of(model), inputs["other_prompt_ids"], inputs["other_prompt_mask"],
                                     *completion, cfg.temperature)
        logits_S, logp_S = score(model, inputs["prompt_ids"], inputs["prompt_mask"], *completion, cfg.temperature)
        mask = self.loss_mask(inputs)
        A = inputs["advantages"]
        if cfg.kl_estimator == "token":
            A = A.unsqueeze(1) - cfg.beta * (logp_S.detach() - logp_T) * mask
        kl_tokens = rl.kl_per_position(logits_S, logits_T) if cfg.kl_estimator == "analytic" else None
        loss, stats = opsd.opsd_loss(logp_S, inputs["sampling_per_token_logps"], A, mask, cfg.beta, cfg.clip_eps,
                                     kl_tokens)
        return self.scaled(loss, stats, logits_S, mask, inputs)


TRAINERS = dict(pi_distill=(PiDistillTrainer, pi_distill.PiDistillConfig), opsd=(OPSDTrainer, opsd.OPSDConfig))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in TRAINERS:
        raise SystemExit(f"usage: python trl_trainers.py {{{' | '.join(TRAINERS)}}} [--key=value ...]  "
                         "(the flags of pi_distill.py or opsd.py; --help after the name lists them)")
    trainer_class, cfg_class = TRAINERS[argv[0]]
    cfg = config.parse_args(cfg_class, argv[1:])
    trainer = trainer_class(cfg)
    trainer.train(resume_from_checkpoint=cfg.resume or None)
    trainer.finish()


if __name__ == "__main__":
    main()
