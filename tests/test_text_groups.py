"""Adding a group of texts and a loss term on it touches three places: the items (a field with the group's name),
train.text_groups (so that the collate tokenises it) and the loss (compute_losses plus its weight in
LOSS_WEIGHTS). This test adds "paraphrases" with a toy sigmoid term and runs train.train_step with it."""

import torch

import data
import world
import losses
import runtime
import train
from model import DualEncoder, WordTokenizer, model_config


class NoReport:
    @staticmethod
    def add_skipped(skipped, n_global):
        pass


def test_a_new_text_group_trains_through_three_places(monkeypatch):
    tok = WordTokenizer(world.world_vocabulary(), 16)
    ds = world.WorldDataset(6, seed=1)
    # 1. the items carry the group under its name: here one paraphrase per caption (its words reversed)
    items = [dict(ds[i], paraphrases=[" ".join(reversed(ds[i]["caption"].split()))]) for i in range(6)]
    # 2. the collate tokenises it
    monkeypatch.setattr(train, "text_groups", lambda loss: ("paraphrases",))
    # 3. a term on it, with its weight
    base = train.compute_losses

    def compute_losses(out, batch, cfg, rank_images):
        terms = base(out, batch, cfg, rank_images)
        para = out["text"]["paraphrases"]
        terms["para"] = losses.concept_loss(out["image"], para, batch["owner"]["paraphrases"],
                                            out["logit_scale"], out["logit_bias"])
        return terms

    monkeypatch.setattr(train, "compute_losses", compute_losses)
    monkeypatch.setitem(train.LOSS_WEIGHTS, "para", lambda cfg, step: 0.5)

    cfg = train.Config(batch_size=6)
    batch = data.Collate(tok, 32, train.text_groups(cfg.loss))(items)
    assert batch["rows"]["paraphrases"].shape == (6,) and batch["owner"]["paraphrases"].tolist() == list(range(6))
    torch.manual_seed(0)
    model = DualEncoder(model_config("tiny", vocab_size=tok.vocab_size))
    env = runtime.Env(rank=0, world=1, local_rank=0, device=torch.device("cpu"), ddp=False, use_cuda=False)
    loss, terms, n = train.train_step(batch, model, None, cfg, env, NoReport)
    assert set(terms) == {"con", "para"} and n == 6
    # the term is what the same loss gives on the paraphrases encoded alone, and the total carries its weight
    with torch.no_grad():
        x = model.encode_image(batch["images"])[0]
        want = losses.concept_loss(x, model.encode_text(tok.encode([it["paraphrases"][0] for it in items])), torch.arange(6),
                                   model.logit_scale, model.logit_bias)
    torch.testing.assert_close(terms["para"].detach(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.detach(), (terms["con"] + 0.5 * terms["para"]).detach())
    assert model.text.token_embedding.weight.grad.abs().sum() > 0
