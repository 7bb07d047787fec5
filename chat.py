"""
chat.py -- the chat format both views share, behind one interface for the tiny model's tokenizer (ChatTokenizer,
tiktoken with BPE ranks trained on the toy world) and a pretrained model's (HFChatTokenizer, its own chat
template): encode, decode, prompt(system, request, pi), turn_header(turn), observation(obs, next_turn), and the
end and pad token ids. episode_tokens lays out a whole episode's continuation in it.

An episode is one token sequence:  prompt | continuation.
    prompt        <|system|> system text [PI block] <|end|> <|user|> request <|end|>
    continuation  <|assistant|> step1 action <|end|> <|tool|> observation <|end|> <|assistant|> step2 action ...
The step labels match the PI's numbered lines ("step2 get_orders U37"), so following the PI is one look-up.
The teacher's prompt holds the PI block, the student's does not; the continuation is the same tokens in
both views, and only the tokens the model wrote (actions and their <|end|>) get loss, ratios and KL.
"""
import tiktoken

from env_api import pi_block, step_label

SPECIALS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>", "<|pad|>")
PATTERN = r"\n| ?[^\s]+| +"  # words keep their leading space, so a word tokenizes the same everywhere


class ChatTokenizer:
    """A tiktoken.Encoding with BPE ranks trained on the toy world, plus role tokens.
    Each segment is encoded on its own and the token lists are concatenated (never a joined string)."""

    def __init__(self, ranks):
        specials = {s: len(ranks) + i for i, s in enumerate(SPECIALS)}
        self.enc = tiktoken.Encoding("toyshop", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=specials)
        self.system, self.user, self.assistant, self.tool, self.end, self.pad = specials.values()
        self.vocab_size = self.enc.n_vocab

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode([i for i in ids if i < self.system])

    def prompt(self, system, request, pi=""):
        return ([self.system, *self.encode(system), *self.encode(pi_block(pi)), self.end,
                 self.user, *self.encode(request), self.end])

    def turn_header(self, turn):
        """Opens model turn `turn` (1, 2, ...): the role token and the step label the PI also uses. The model then
        writes " action" (leading space), the very tokens of the PI line "step3 return #99"."""
        return [self.assistant, *self.encode(step_label(turn))]

    def observation(self, obs, next_turn):
        """What follows a model turn that did not end the episode: the tool's output and the next turn's header."""
        return [self.tool, *self.encode(obs), self.end, *self.turn_header(next_turn)]


def episode_tokens(tok, turns):
    """Continuation tokens and model-written mask for a list of (model text, observation or None at the end)."""
    tokens = tok.turn_header(1)
    mask = [0] * len(tokens)
    for turn, (text, obs) in enumerate(turns, 1):
        written = tok.encode(" " + text) + [tok.end]
        tokens += written
        mask += [1] * len(written)
        if obs is not None:
            after = tok.observation(obs, turn + 1)
            tokens += after
            mask += [0] * len(after)
    return tokens, mask


class HFChatTokenizer:
    """A pretrained model's own tokenizer and chat template behind ChatTokenizer's interface (--model=...).
    The PI block goes at the end of the system message; the tool's observation comes back as a user message
    (the role every template has); a model turn ends with the tokenizer's eos token (<|im_end|> for ChatML).
    The template's pieces are found by rendering short conversations and taking the differences."""

    def __init__(self, hf):
        self.hf, self.vocab_size, self.end = hf, len(hf), hf.eos_token_id
        self.pad = hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id
        head = [dict(role="system", content="S"), dict(role="user", content="U")]
        self.generation_prompt = self._render(head, True)[len(self._render(head)):]
        # the text around an observation, rendered once (not per turn): from the end of a model turn ("A" + eos) to
        # a placeholder user message, and from it to the next generation prompt. One rendering, not a difference of
        # two: templates such as Qwen3's render an earlier turn differently once a user message follows it.
        marker, closing = "OBSERVATION", "A" + hf.decode([self.end])
        text = self._render(head + [dict(role="assistant", content="A"), dict(role="user", content=marker)], True)
        self.obs_before, self.obs_after = text[text.index(closing) + len(closing):].split(marker)

    def _render(self, messages, generation_prompt=False):
        # enable_thinking=False: Qwen3 answers without a <think> block (a turn here is a few tokens); other templates
        # ignore the flag
        return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                           enable_thinking=False)

    def encode(self, text):
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids):
        return self.hf.decode(ids, skip_special_tokens=True)

    def prompt(self, system, request, pi=""):
        return self.encode(self._render([dict(role="system", content=system + pi_block(pi)),
                                         dict(role="user", content=request)]))

    def turn_header(self, turn):
        return self.encode(self.generation_prompt + step_label(turn))

    def observation(self, obs, next_turn):
        return self.encode(self.obs_before + obs + self.obs_after + step_label(next_turn))
