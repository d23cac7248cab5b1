"""Layer groups: split a model's parameters into the groups a slice gives learning rates to.

Three ways, as a model config says (`model.groups`):
- a list of module-name prefixes, first group first and head last: `[body.0, body.1, head]`;
- a number n: n contiguous groups over the model's top-level children (the head is the last);
- a splitter callable `model -> list of groups`, each a module or a list of parameters (fastai's
  splitter convention), named by a dotted path.

Every trainable parameter lands in exactly one group; a parameter in none or in two, and a prefix
that matches nothing, is an error that names it.

`body_and_head` is a splitter for any classifier whose last top-level module with parameters
is its head (every torchvision classification model: `fc`, `classifier`, `heads`, `head`):
`model.groups: sweeper.zoo.groups.body_and_head` gives two body groups and the head; a splitter of
your own is any function `model -> list of groups`, named by its dotted path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence

from torch import nn

from sweeper.config import ConfigError

__all__ = ["GroupError", "LayerGroups", "body_and_head", "split_groups"]

# One layer group: (qualified parameter name, parameter) pairs in model order.
LayerGroup = list[tuple[str, nn.Parameter]]
LayerGroups = list[LayerGroup]


class GroupError(ConfigError):
    """A layer-group split that does not cover the model exactly once (a config that cannot run,
    reported as the others are: one line, exit 2)."""


def split_groups(model: nn.Module, spec: object = None) -> LayerGroups:
    """Split `model` into layer groups by `spec` (None: one group of everything)."""
    if spec is None:
        return [list(model.named_parameters())]
    if isinstance(spec, bool):
        raise GroupError(f"model.groups: {spec!r} is not a split; give a number, prefixes or a splitter.")
    if isinstance(spec, int):
        return _split_contiguous(model, spec)
    if isinstance(spec, str):
        return _split_with(model, _import_splitter(spec))
    if callable(spec):
        return _split_with(model, spec)
    if isinstance(spec, Sequence):
        return _split_by_prefixes(model, [str(p) for p in spec])
    raise GroupError(
        f"model.groups: {spec!r} is not a split; give a number of groups, a list of module-name "
        f"prefixes (head last), or the dotted path of a splitter function."
    )


def body_and_head(model: nn.Module, body_groups: int = 2) -> list[list[nn.Parameter]]:
    """`body_groups` contiguous groups of the body, then the head (fastai's body/head split, with
    the body cut into groups the way fastai cuts a ResNet's).

    The head is the model's last top-level module with parameters; the body is every parameter
    before it. The body is cut at module boundaries: its units start as the other top-level
    modules (and any parameters the model holds itself, first), and while one unit holds more
    than half of the body's parameters and has modules inside it, it is replaced by them, so a
    body that is one big `features` or `encoder` is cut between its blocks. The units are then
    dealt into `body_groups` runs of as equal a count as can be (the earlier runs take any
    remainder). ResNet-18 and -34 so split as fastai's `_resnet_split` does: stem to layer2,
    layer3 and layer4.
    """
    children = [(name, child) for name, child in model.named_children() if _has_params(child)]
    if not children:
        raise GroupError("model.groups: body_and_head found no module with parameters to be the head.")
    head = children[-1][1]
    units = [_own_params(model), *(child for _, child in children[:-1])]
    units = [unit for unit in units if _size(unit)]
    body_size = sum(_size(unit) for unit in units)
    while True:
        largest = max(units, key=_size, default=None)
        inner = [child for child in largest.children() if _has_params(child)] if isinstance(largest, nn.Module) else []
        if largest is None or _size(largest) * 2 <= body_size or not inner:
            break
        at = units.index(largest)
        units[at : at + 1] = [u for u in (_own_params(largest), *inner) if _size(u)]
    if not 1 <= body_groups <= len(units):
        raise GroupError(
            f"model.groups: body_and_head cannot cut a body of {len(units)} unit(s) into "
            f"{body_groups} groups; choose 1 to {len(units)}, or give your own splitter."
        )
    return [*(_flatten(run) for run in _runs(units, body_groups)), list(head.parameters())]


def _runs(items: list, n: int) -> list[list]:
    """`items` dealt into n contiguous runs as equal in length as can be; the earlier runs take
    any remainder."""
    base, extra = divmod(len(items), n)
    runs, start = [], 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        runs.append(items[start : start + size])
        start += size
    return runs


def _own_params(module: nn.Module) -> list[nn.Parameter]:
    """The parameters a module holds itself, not through a child (a ViT's class token)."""
    return list(module.parameters(recurse=False))


def _size(unit: nn.Module | list[nn.Parameter]) -> int:
    params = unit.parameters() if isinstance(unit, nn.Module) else unit
    return sum(p.numel() for p in params)


def _split_by_prefixes(model: nn.Module, prefixes: list[str]) -> LayerGroups:
    if not prefixes:
        raise GroupError("model.groups: an empty prefix list makes no groups; list at least one prefix.")
    groups: LayerGroups = [[] for _ in prefixes]
    matched = [False] * len(prefixes)
    unplaced = []
    for name, param in model.named_parameters():
        owners = [i for i, prefix in enumerate(prefixes) if _under(name, prefix)]
        if len(owners) > 1:
            raise GroupError(
                f"model.groups: parameter {name!r} matches more than one prefix "
                f"({[prefixes[i] for i in owners]}); make the prefixes disjoint so each parameter "
                f"is in exactly one group."
            )
        if not owners:
            unplaced.append(name)
            continue
        groups[owners[0]].append((name, param))
        matched[owners[0]] = True
    for prefix, hit in zip(prefixes, matched):
        if not hit:
            raise GroupError(
                f"model.groups: prefix {prefix!r} matches no parameter; the model's top-level "
                f"modules are {[n for n, _ in model.named_children()]}."
            )
    if unplaced:
        raise GroupError(
            f"model.groups: parameter(s) {unplaced[:5]}{' ...' if len(unplaced) > 5 else ''} are in "
            f"no group; add a prefix that covers them (a slice needs every parameter in one group)."
        )
    return groups


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _split_contiguous(model: nn.Module, n_groups: int) -> LayerGroups:
    children = [(name, child) for name, child in model.named_children() if _has_params(child)]
    if n_groups < 1 or n_groups > len(children):
        raise GroupError(
            f"model.groups: {n_groups} groups cannot be made from the {len(children)} top-level "
            f"modules with parameters ({[n for n, _ in children]}); choose 1 to {len(children)}, "
            f"or list prefixes."
        )
    runs = _runs([child for _, child in children], n_groups)  # as evenly as can be
    return _split_with(model, lambda m: runs)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _import_splitter(path: str) -> Callable[[nn.Module], Iterable]:
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        raise GroupError(
            f"model.groups: cannot import splitter {path!r}; give a dotted path to a function "
            f"model -> list of groups (modules or parameter lists)."
        ) from None


def _split_with(model: nn.Module, splitter: Callable[[nn.Module], Iterable]) -> LayerGroups:
    names = {id(p): n for n, p in model.named_parameters()}
    seen: dict[int, int] = {}
    groups: LayerGroups = []
    for index, group in enumerate(splitter(model)):
        params = list(group.parameters()) if isinstance(group, nn.Module) else _flatten(group)
        members: LayerGroup = []
        for param in params:
            key = id(param)
            if key not in names:
                raise GroupError(f"model.groups: the splitter returned a parameter that is not in the model (group {index}).")
            if key in seen and seen[key] != index:
                raise GroupError(
                    f"model.groups: parameter {names[key]!r} is in groups {seen[key]} and {index}; "
                    f"each parameter must be in exactly one group."
                )
            if key not in seen:
                seen[key] = index
                members.append((names[key], param))
        if not members:
            raise GroupError(f"model.groups: group {index} has no parameters; drop it or give it some.")
        groups.append(members)
    missing = [name for key, name in names.items() if key not in seen]
    if missing:
        raise GroupError(
            f"model.groups: parameter(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} are in no "
            f"group; the splitter must place every parameter."
        )
    return groups


def _flatten(group: object) -> list[nn.Parameter]:
    if isinstance(group, nn.Parameter):
        return [group]
    params: list[nn.Parameter] = []
    for item in group:  # type: ignore[union-attr]
        params.extend(item.parameters() if isinstance(item, nn.Module) else _flatten(item))
    return params
