"""Drives `spar serve` with the official `openai` client: models, chat (logprobs, top_logprobs, reasoning split,
streaming), completions from token ids (token-in / token-out, legacy `logprobs: N`), request checks, and the
bearer token. Exits non-zero on any mismatch."""
import sys

import openai
from openai import OpenAI

base, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, api_key=key)

models = client.models.list()
assert [m.id for m in models.data] == ["tiny"], models

chat = client.chat.completions.create(
    model="tiny", messages=[{"role": "user", "content": "Hello doctor"}], max_tokens=8, temperature=0.7, seed=3,
    logprobs=True, extra_body={"chat_template_kwargs": {"enable_thinking": False}, "return_token_ids": True},
)
choice = chat.choices[0]
assert choice.finish_reason in ("stop", "length"), choice
lps = choice.logprobs.content
assert len(lps) >= 1 and all(t.logprob <= 0.0 for t in lps), lps
assert chat.usage.completion_tokens == len(choice.model_extra["token_ids"]), chat
again = client.chat.completions.create(
    model="tiny", messages=[{"role": "user", "content": "Hello doctor"}], max_tokens=8, temperature=0.7, seed=3,
    extra_body={"chat_template_kwargs": {"enable_thinking": False}},
)
assert again.choices[0].message.content == choice.message.content, "same seed, same text"

pieces = []
for chunk in client.chat.completions.create(
    model="tiny", messages=[{"role": "user", "content": "Hello doctor"}], max_tokens=8, temperature=0.7, seed=3,
    stream=True, extra_body={"chat_template_kwargs": {"enable_thinking": False}},
):
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
assert "".join(pieces) == choice.message.content, (pieces, choice.message.content)

comp = client.completions.create(
    model="tiny", prompt=[300, 301, 302, 303], max_tokens=5, temperature=0.0, logprobs=0,
    extra_body={"return_token_ids": True, "ignore_eos": True},
)
c = comp.choices[0]
assert c.finish_reason == "length" and len(c.model_extra["token_ids"]) == 5, c
assert len(c.logprobs.token_logprobs) == 5, c.logprobs

# top_logprobs, chat. Greedy: the sampled token leads its alternatives, which are ranked.
NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}
hello = [{"role": "user", "content": "Hello doctor"}]


def ranked(values):
    return all(a >= b for a, b in zip(values, values[1:]))


greedy = client.chat.completions.create(
    model="tiny", messages=hello, max_tokens=6, temperature=0.0, logprobs=True, top_logprobs=4,
    extra_body={**NO_THINK, "ignore_eos": True},
)
content = greedy.choices[0].logprobs.content
assert len(content) == 6, content
for t in content:
    alts = t.top_logprobs
    assert len(alts) == 4 and ranked([a.logprob for a in alts]), alts
    assert alts[0].token == t.token and alts[0].logprob == t.logprob, (t, alts)
    assert all(bytes(a.bytes) == a.token.encode() for a in alts), alts

# Sampled: the sampled token's log-prob is among the top ones or below them.
sampled = client.chat.completions.create(
    model="tiny", messages=hello, max_tokens=8, temperature=1.0, seed=5, logprobs=True, top_logprobs=3,
    extra_body=NO_THINK,
)
for t in sampled.choices[0].logprobs.content:
    alts = t.top_logprobs
    assert len(alts) == 3 and ranked([a.logprob for a in alts]), alts
    assert t.logprob <= alts[0].logprob, (t, alts)
    assert t.logprob <= alts[-1].logprob or any(a.logprob == t.logprob and a.token == t.token for a in alts), (t, alts)

# Streamed: the chunks carry the same alternatives.
streamed = []
for chunk in client.chat.completions.create(
    model="tiny", messages=hello, max_tokens=6, temperature=0.0, logprobs=True, top_logprobs=4, stream=True,
    extra_body={**NO_THINK, "ignore_eos": True},
):
    if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
        streamed.extend(chunk.choices[0].logprobs.content)
key = lambda ts: [(t.token, t.logprob, [(a.token, a.logprob) for a in t.top_logprobs]) for t in ts]
assert key(streamed) == key(content), (streamed, content)

# Requests OpenAI refuses are refused, naming the field.
for bad in [dict(logprobs=True, top_logprobs=21), dict(top_logprobs=2)]:
    try:
        client.chat.completions.create(model="tiny", messages=hello, max_tokens=2, **bad)
        raise SystemExit(f"{bad} must be refused")
    except openai.BadRequestError as e:
        assert e.param == "top_logprobs" and "top_logprobs" in str(e), e

# top_logprobs, legacy completions: `logprobs: N` gives one {token: logprob} object per token, most likely first.
legacy = client.completions.create(
    model="tiny", prompt=[300, 301, 302, 303], max_tokens=5, temperature=0.0, logprobs=3,
    extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True, "return_token_ids": True},
)
lp = legacy.choices[0].logprobs
assert len(lp.top_logprobs) == 5, lp
for tok, tok_lp, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
    assert len(top) == 3 and ranked(list(top.values())), top
    assert all(k.startswith("token_id:") for k in top), top
    assert next(iter(top.items())) == (tok, tok_lp), (tok, tok_lp, top)
as_text = client.completions.create(
    model="tiny", prompt=[300, 301, 302, 303], max_tokens=5, temperature=0.0, logprobs=3,
    extra_body={"ignore_eos": True},
)
# Alternatives that decode to the same text share a key: at most 3 per token.
assert all(1 <= len(top) <= 3 and ranked(list(top.values())) for top in as_text.choices[0].logprobs.top_logprobs)
assert comp.choices[0].logprobs.top_logprobs is None, "logprobs: 0 asks for no alternatives"
streamed = []
for chunk in client.completions.create(
    model="tiny", prompt=[300, 301, 302, 303], max_tokens=5, temperature=0.0, logprobs=3, stream=True,
    extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True},
):
    if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.top_logprobs:
        streamed.extend(chunk.choices[0].logprobs.top_logprobs)
assert [list(t.items()) for t in streamed] == [list(t.items()) for t in lp.top_logprobs], (streamed, lp)
try:
    client.completions.create(model="tiny", prompt=[300], max_tokens=2, logprobs=21)
    raise SystemExit("logprobs 21 must be refused")
except openai.BadRequestError as e:
    assert e.param == "logprobs", e

try:
    OpenAI(base_url=base, api_key="wrong").models.list()
    raise SystemExit("a wrong bearer token must be refused")
except openai.AuthenticationError:
    pass
print("openai client OK")
