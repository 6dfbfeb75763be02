"""Moved to :mod:`dkm_tf.core.units`; an alias kept for old imports (see dkm_tf._compat)."""

from dkm_tf._compat import alias

alias(__name__)
