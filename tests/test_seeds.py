import math

import pytest

import data
import train
from model import WordTokenizer, model_config


def build(init_ckpt=None, **kw):
    cfg = train.Config(**kw)
    tok = WordTokenizer(data.world_vocabulary(), 16)
    model, _ = train.build_model(cfg, model_config("tiny"), tok, None, init_ckpt, "cpu", log=lambda *a: None)
    return model


@pytest.mark.parametrize("bias, batch, want", [(-10.0, 128, -10.0), (-3.5, 128, -3.5), (0.0, 64, -math.log(64))])
def test_init_logit_bias_from_scratch(bias, batch, want):
    assert build(init_logit_bias=bias, batch_size=batch).logit_bias.item() == pytest.approx(want)


def test_init_logit_bias_leaves_a_checkpoint_alone():
    src = build(init_logit_bias=-2.0)
    state = {k: v.clone() for k, v in src.state_dict().items()}
    m = build(init_ckpt={"model": state}, init_logit_bias=-7.0)
    assert m.logit_bias.item() == pytest.approx(-2.0)


def test_default_recipe_warmup():
    # the longer warm-up is what keeps seeds from stalling at the all-equal solution (METHOD.md §11)
    assert train.Config().warmup == 200
