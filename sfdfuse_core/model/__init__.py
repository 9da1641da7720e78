"""The networks of the SFDFuse family and their registry.

:class:`SFDFuse` (see :mod:`sfdfuse_core.model.sfdfuse`) is the published network;
:class:`SFDFuseLite` (:mod:`sfdfuse_core.model.lite`) the compact one for CPUs;
:mod:`sfdfuse_core.model.registry` names them.
"""
from sfdfuse_core.model.lite import SFDFuseLite
from sfdfuse_core.model.registry import (NETWORKS, build_model, network_of, network_spec,
                                         shipped_weights_path)
from sfdfuse_core.model.sfdfuse import DetailBranch, SFDFuse, SFDFuseDecoder, SFDFuseEncoder

__all__ = ['SFDFuse', 'SFDFuseEncoder', 'SFDFuseDecoder', 'DetailBranch', 'SFDFuseLite',
           'NETWORKS', 'build_model', 'network_of', 'network_spec', 'shipped_weights_path']
