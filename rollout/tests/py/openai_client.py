"""Drives `spar serve` with the official `openai` client: models, chat (logprobs, reasoning split, streaming),
completions from token ids (token-in / token-out), and the bearer token. Exits non-zero on any mismatch."""
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

try:
    OpenAI(base_url=base, api_key="wrong").models.list()
    raise SystemExit("a wrong bearer token must be refused")
except openai.AuthenticationError:
    pass
print("openai client OK")
