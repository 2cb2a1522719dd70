"""Models: pooling functions and modules, backbones, the global descriptor network, whitening, query
networks for asymmetric retrieval, Token, CSA, and one :func:`save_model` / :func:`load_model` for all."""

from .backbones import BACKBONES, build_backbone
from .checkpoints import load_published
from .functional import gem, l2n, mac, rmac, rmac_regions, spoc
from .global_net import GlobalNet, build_global_net
from .pooling import GeM, L2N, MAC, POOLINGS, RMAC, SPoC, build_pooling
from .query_net import QueryNet, ResidualTransform, build_query_net, complexity, init_projection, pooled, ridge_projection
from .registry import KINDS, load_model, model_kind, model_meta, save_model
from .whitening import Whitening, init_fc_whitening, learn_pca_whitening, learn_whitening

__all__ = ["BACKBONES", "GeM", "GlobalNet", "KINDS", "L2N", "MAC", "POOLINGS", "QueryNet", "RMAC", "ResidualTransform",
           "SPoC", "Whitening", "build_backbone", "build_global_net", "build_pooling", "build_query_net", "complexity",
           "gem", "init_fc_whitening", "init_projection", "l2n", "learn_pca_whitening", "learn_whitening",
           "load_model", "load_published", "mac", "model_kind", "model_meta", "pooled", "ridge_projection", "rmac",
           "rmac_regions", "save_model", "spoc"]
