"""Models: pooling functions and modules, backbones, the global descriptor network, whitening,
query networks for asymmetric retrieval."""

from .backbones import BACKBONES, build_backbone
from .checkpoints import PUBLISHED, load_network, load_published, save_cirtorch_checkpoint
from .functional import gem, l2n, mac, rmac, rmac_regions, spoc
from .global_net import GlobalNet, build_global_net
from .pooling import GeM, L2N, MAC, POOLINGS, RMAC, SPoC, build_pooling
from .query_net import (QueryNet, ResidualTransform, build_query_net, complexity, init_projection, load_query_net, pooled,
                        ridge_projection, save_query_net)
from .whitening import Whitening, init_fc_whitening, learn_pca_whitening, learn_whitening

__all__ = ["PUBLISHED", "load_network", "load_published", "save_cirtorch_checkpoint", "BACKBONES", "GeM", "GlobalNet", "L2N", "MAC", "POOLINGS", "RMAC", "SPoC", "Whitening",
           "build_backbone", "build_global_net", "build_pooling", "gem", "init_fc_whitening", "l2n",
           "learn_pca_whitening", "learn_whitening", "mac", "rmac", "rmac_regions", "spoc",
           "QueryNet", "ResidualTransform", "build_query_net", "complexity", "init_projection", "load_query_net", "pooled",
           "ridge_projection", "save_query_net"]
