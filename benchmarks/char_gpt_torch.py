"""The same-machine reference for `gin_configs/pretrain.py:shakespeare_char`: nanoGPT's
CPU recipe written out in plain PyTorch, so that our wall time and loss can be set beside
it on one machine instead of beside a figure from another one.

The recipe (nanoGPT's README, "I only have a macbook", on config/train_shakespeare_char.py):
character-level Tiny Shakespeare, the first 90% of the characters for training and the
last 10% for validation; a GPT of 4 layers x 4 heads x 128 with learned positions,
pre-LayerNorm without biases, GELU MLP of 4x, tied input and output embeddings, no
dropout; block 64, batch 12 of random windows, 2,000 iterations of AdamW (lr 1e-3,
betas 0.9/0.99, weight decay 0.1 on matrices only) with 100 linear warmup steps and
cosine decay to 1e-4, gradient norm clipped at 1; train and val loss estimated on 20
batches each every 250 iterations and at the end. fp32, eager (`--compile=False`).

This is our own code, not nanoGPT's: it follows the recipe, not the source, so its loss
is comparable in kind to nanoGPT's published 1.886 and its time is what eager PyTorch
takes for the recipe here.

    python benchmarks/char_gpt_torch.py [--steps=2000] [--data=PATH] [--seed=1337]

Prints one line per evaluation and a final `result:` line with the validation loss, the
training loop's seconds and the process's seconds since start.
"""

import argparse
import math
import os
import time

PROCESS_START = time.time()

import torch  # noqa: E402  (timed from before the import, as the CLI's start-up is)
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, bias=False)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)
        self.norm2 = nn.LayerNorm(width, bias=False)
        self.up = nn.Linear(width, 4 * width, bias=False)
        self.down = nn.Linear(4 * width, width, bias=False)

    def forward(self, x):
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(batch, length, width))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class CharGPT(nn.Module):
    def __init__(self, vocab, block, width=128, layers=4, heads=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(block, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width, bias=False)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = (
                    0.02 / math.sqrt(2 * layers)
                    if name.endswith(("out.weight", "down.weight"))
                    else 0.02
                )
                nn.init.normal_(p, 0.0, std)

    def forward(self, ids, targets):
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + self.position(positions)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def learning_rate(step, peak=1e-3, floor=1e-4, warmup=100, total=2000):
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / (total - warmup))
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def main():
    default_data = os.path.join(
        os.environ.get("T5X_LITE_DATA_DIR", "../shared/data"), "tinyshakespeare", "input.txt"
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=default_data, help="Tiny Shakespeare's input.txt")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval_every", type=int, default=250)
    parser.add_argument("--eval_batches", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument(
        "--keep_freed_memory",
        action="store_true",
        help="malloc keeps what it frees, as the t5x-lite command does by default",
    )
    args = parser.parse_args()
    if args.keep_freed_memory:  # before torch's threads first allocate
        from t5x_lite import host_memory

        host_memory.keep_freed_memory()
    if not os.path.exists(args.data):
        raise SystemExit(
            f"char_gpt_torch: no text at {args.data}; pass --data or set T5X_LITE_DATA_DIR"
        )

    torch.manual_seed(args.seed)
    block, batch = 64, 12
    with open(args.data, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    splits = {"train": data[:split], "val": data[split:]}

    def sample(name):
        source = splits[name]
        starts = torch.randint(len(source) - block, (batch,))
        x = torch.stack([source[s : s + block] for s in starts])
        y = torch.stack([source[s + 1 : s + 1 + block] for s in starts])
        return x, y

    model = CharGPT(len(chars), block)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.99),
    )

    @torch.no_grad()
    def estimate():
        model.eval()
        losses = {
            n: sum(model(*sample(n)).item() for _ in range(args.eval_batches)) / args.eval_batches
            for n in splits
        }
        model.train()
        return losses

    loop_start = time.time()
    losses = {}
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            losses = estimate()
            print(
                f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}",
                flush=True,
            )
        if step == args.steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total=args.steps)
        loss = model(*sample("train"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    now = time.time()
    print(
        f"result: val_loss={losses['val']:.4f} loop_s={now - loop_start:.1f} "
        f"process_s={now - PROCESS_START:.1f} threads={torch.get_num_threads()} "
        f"params={sum(p.numel() for p in model.parameters())}",
        flush=True,
    )


if __name__ == "__main__":
    main()
