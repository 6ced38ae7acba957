r"""PyTorch bridge: the solver's outputs as differentiable functions of torch tensors.

```python
import jax
jax.config.update("jax_enable_x64", True)  # needed for float64 tensors
import torch
from sdot_jax import Box
from sdot_jax import torch as sdt

y = torch.rand(100, 2, dtype=torch.float64, requires_grad=True)
loss = sdt.distance(y, Box())
loss.backward()                            # y.grad = d W2 / d y
```

- Tensors cross to JAX and back by DLPack, without copies on CPU (and on CUDA when JAX has a GPU
  backend; otherwise CUDA tensors are copied to the CPU and the results moved back).
- Float64 stays float64, which needs ``jax_enable_x64``: a float64 tensor with x64 off raises a
  ``TypeError`` instead of being silently rounded to float32.
- Gradients: a ``torch.autograd.Function`` whose backward is the JAX VJP (implicit
  differentiation of the weights, envelope theorem for the distance).  The backward pass
  recomputes the solve inside its own compiled function, so a forward + backward costs about two
  solves.
- Everything runs under ``jax.jit`` (compiled once per shape and options): the capacities cannot
  grow on the fly, so an overflowing cell raises an error naming the capacity; pass
  ``capacities=`` (see `sdot_jax.Capacities`) for unusual inputs.  A solve that does not converge
  raises its status's message too.

Torch is an optional dependency, imported when this module is.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import torch

from ._jit import jit
from .api import optimal_transport_plan as _plan
from .distance import distance as _distance
from .measures.diracs import SumOfDiracs

__all__ = ["to_jax", "to_torch", "wrap", "distance", "optimal_transport_plan", "TorchPlan"]


def _jax_has_gpu() -> bool:
    try:
        return len(jax.devices("gpu")) > 0
    except RuntimeError:
        return False


def to_jax(tensor: torch.Tensor) -> jax.Array:
    """A torch tensor as a JAX array (DLPack, zero-copy when the memory layout allows)."""
    if tensor.dtype == torch.float64 and not jax.config.jax_enable_x64:
        raise TypeError(
            "a float64 tensor needs JAX's 64-bit mode: call "
            "`jax.config.update('jax_enable_x64', True)` at startup (or pass float32 tensors)."
        )
    tensor = tensor.detach()
    if tensor.is_cuda and not _jax_has_gpu():
        tensor = tensor.cpu()
    return jax.dlpack.from_dlpack(tensor.contiguous())


def to_torch(array: jax.Array, device: torch.device | None = None) -> torch.Tensor:
    """A JAX array as a torch tensor (DLPack, zero-copy), moved to ``device`` if given."""
    out = torch.from_dlpack(jnp.asarray(array))
    return out if device is None or out.device == device else out.to(device)


def _is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


@jit
def _forward(fn, args, kwargs):
    return fn(*args, **kwargs)


@jit
def _backward(fn, args, kwargs, cotangent, mask):
    """VJP with respect to the leaves of ``args`` where ``mask`` (static) is True."""
    leaves, treedef = jax.tree.flatten(args)
    dynamic = [leaf for leaf, m in zip(leaves, mask) if m]

    def f(dynamic):
        it = iter(dynamic)
        full = [next(it) if m else leaf for leaf, m in zip(leaves, mask)]
        return fn(*jax.tree.unflatten(treedef, full), **kwargs)

    _, pullback = jax.vjp(f, dynamic)
    return pullback(cotangent)[0]


class _Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, kwargs, treedef, holder, *leaves):
        tensors = [leaf for leaf in leaves if _is_tensor(leaf)]
        device = tensors[0].device if tensors else None
        mask = tuple(_is_tensor(leaf) and leaf.is_floating_point() for leaf in leaves)
        args = jax.tree.unflatten(treedef, [to_jax(x) if _is_tensor(x) else x for x in leaves])
        out = _forward(fn, args, kwargs)
        out_leaves, holder[0] = jax.tree.flatten(out)
        ctx.fn, ctx.kwargs, ctx.args, ctx.device, ctx.mask = fn, kwargs, args, device, mask
        ctx.out_avals = [(leaf.shape, leaf.dtype) for leaf in out_leaves]
        ctx.out_treedef = holder[0]
        return tuple(to_torch(leaf, device) for leaf in out_leaves)

    @staticmethod
    def backward(ctx, *grads):
        cot = [
            jnp.zeros(shape, dtype) if g is None else to_jax(g).astype(dtype)
            for g, (shape, dtype) in zip(grads, ctx.out_avals)
        ]
        cotangent = jax.tree.unflatten(ctx.out_treedef, cot)
        grad_dynamic = iter(_backward(ctx.fn, ctx.args, ctx.kwargs, cotangent, ctx.mask))
        grads_in = [to_torch(next(grad_dynamic), ctx.device) if m else None for m in ctx.mask]
        return (None, None, None, None, *grads_in)


def wrap(fn: Callable) -> Callable:
    """Turn a JAX function of array pytrees into a torch function with autograd.

    ``wrap(fn)(*args, **kwargs)``: the torch tensors among the leaves of ``args`` become JAX
    arrays (floating tensors are differentiable; other leaves, e.g. a density with JAX arrays,
    are constants); ``kwargs`` are static options (hashable: floats, ints, `Capacities`...), each
    distinct value compiles once.  Returns the output pytree with torch tensors as leaves, on the
    device of the first input tensor.
    """

    def wrapped(*args, **kwargs):
        leaves, treedef = jax.tree.flatten(args)
        holder = [None]
        flat = _Function.apply(fn, kwargs, treedef, holder, *leaves)
        return jax.tree.unflatten(holder[0], list(flat))

    wrapped.__name__ = getattr(fn, "__name__", "wrapped")
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _distance_fn(y, masses, target, **options):
    return _distance(SumOfDiracs(y, masses), target, **options)


class TorchPlan(NamedTuple):
    """The main outputs of a transport plan, as torch tensors (see `sdot_jax.TransportPlan`)."""

    weights: Any
    cell_masses: Any
    barycenters: Any
    second_order_moments: Any
    cost: Any


def _plan_fn(y, masses, target, **options):
    plan = _plan(SumOfDiracs(y, masses), target, **options)
    return TorchPlan(plan.weights, plan.cell_masses, plan.barycenters, plan.second_order_moments, plan.cost)


def distance(positions, target, masses=None, *, squared: bool = False, **options):
    r"""$W_2$ (or $W_2^2$ with ``squared=True``) between the Diracs at ``positions`` (torch
    ``(n, d)``, with torch ``masses`` ``(n,)``, equal when omitted) and the density ``target``
    (a sdot_jax density, e.g. ``Box()``; its array fields may be torch tensors built with
    `to_jax` outside, or JAX arrays).  Differentiable in torch with respect to ``positions`` and
    ``masses``.  Options are those of `sdot_jax.optimal_transport_plan`."""
    if masses is None:
        masses = torch.full(positions.shape[:1], 1.0 / positions.shape[0], dtype=positions.dtype, device=positions.device)
    return wrap(_distance_fn)(positions, masses, target, squared=squared, **options)


def optimal_transport_plan(positions, target, masses=None, **options) -> TorchPlan:
    """The optimal weights (zero mean), cell masses, barycenters, second moments and cost as torch
    tensors, differentiable with respect to ``positions`` and ``masses``."""
    if masses is None:
        masses = torch.full(positions.shape[:1], 1.0 / positions.shape[0], dtype=positions.dtype, device=positions.device)
    return wrap(_plan_fn)(positions, masses, target, **options)
