"""The SFDFuse network (see :mod:`sfdfuse_core.model.sfdfuse`) and its blocks."""
from sfdfuse_core.model.sfdfuse import (DetailBranch, SFDFuse, SFDFuseDecoder, SFDFuseEncoder,
                                        build_model)

__all__ = ['SFDFuse', 'SFDFuseEncoder', 'SFDFuseDecoder', 'DetailBranch', 'build_model']
