"""A container's environment as a kubelet computes it (pure functions; the agent fetches the objects).

Order and precedence follow the kubelet: the `kubernetes` Service variables, then `envFrom` sources in order,
then `env` entries in order (later wins); `$(VAR)` in values, command and args refers to variables defined
before it (`$$` is a literal `$`, an unknown reference stays as written). Downward API: `fieldRef` (metadata
name/namespace/uid/labels['k']/annotations['k'], spec.nodeName, spec.serviceAccountName, status.hostIP(s),
status.podIP(s)) and `resourceFieldRef` (limits/requests of cpu, memory, ephemeral-storage with a divisor;
an unset limit is the node's allocatable).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from deepseek_testbed.node_agent_images import ImageConfig

Obj = dict[str, Any]

_SUFFIX = {
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class EnvError(Exception):
    """The container cannot be configured (the kubelet's CreateContainerConfigError)."""


def parse_quantity(text: str | int | float) -> Decimal:
    """A Kubernetes quantity ("500m", "4Gi", "1e3") as a Decimal."""
    m = _QUANTITY.match(str(text).strip())
    if not m:
        raise EnvError(f"invalid quantity {text!r}")
    try:
        return Decimal(m.group(1)) * _SUFFIX[m.group(2) or ""]
    except InvalidOperation as e:
        raise EnvError(f"invalid quantity {text!r}") from e


def expand(text: str, env: Mapping[str, str]) -> str:
    """Expand `$(VAR)` references the way the kubelet does."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, text)


def field_value(pod: Obj, path: str) -> str:
    """The value of a downward-API `fieldRef.fieldPath`."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    m = _FIELD_KEY.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple: dict[str, Callable[[], Any]] = {
        "metadata.name": lambda: meta.get("name", ""),
        "metadata.namespace": lambda: meta.get("namespace", ""),
        "metadata.uid": lambda: meta.get("uid", ""),
        "spec.nodeName": lambda: spec.get("nodeName", ""),
        "spec.serviceAccountName": lambda: spec.get("serviceAccountName", "default"),
        "status.hostIP": lambda: status.get("hostIP", ""),
        "status.hostIPs": lambda: ",".join(i["ip"] for i in status.get("hostIPs") or []),
        "status.podIP": lambda: status.get("podIP", ""),
        "status.podIPs": lambda: ",".join(i["ip"] for i in status.get("podIPs") or []),
    }
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    if path not in simple:
        raise EnvError(f"fieldRef {path!r} is not supported (valid: {', '.join(sorted(simple))}, labels/annotations)")
    return str(simple[path]())


def resource_value(container: Obj, ref: Obj, allocatable: Mapping[str, str]) -> str:
    """The value of a downward-API `resourceFieldRef` (rounded up to an integer of `divisor`, as the kubelet)."""
    resource = str(ref.get("resource", ""))
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in ("cpu", "memory", "ephemeral-storage"):
        raise EnvError(f"resourceFieldRef {resource!r} is not supported")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(name)  # a request defaults to the limit
    if value is None:
        value = allocatable.get(name, "0") if kind == "limits" else "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor <= 0:
        raise EnvError(f"resourceFieldRef {resource!r}: divisor must be positive")
    return str(math.ceil(parse_quantity(value) / divisor))


def _decode(data: Mapping[str, str], binary: bool) -> dict[str, str]:
    if not binary:
        return dict(data)
    return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()}


def container_env(
    pod: Obj,
    container: Obj,
    *,
    base: Mapping[str, str],
    lookup: Callable[[str, str], Obj | None],
    allocatable: Mapping[str, str],
) -> dict[str, str]:
    """The environment of `container`: `base` (image defaults, service variables), envFrom, env.

    `lookup(kind, name)` returns the ConfigMap or Secret (kind "ConfigMap"/"Secret") in the pod's namespace,
    or None if it does not exist. Missing non-optional sources raise EnvError with the kubelet's wording."""
    env: dict[str, str] = dict(base)
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix", ""))
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(key)
            if ref is None:
                continue
            obj = lookup(kind, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise EnvError(f'{kind.lower()} "{ref["name"]}" not found')
            values = _decode(obj.get("data") or {}, binary=kind == "Secret")
            if kind == "ConfigMap":
                binary = obj.get("binaryData") or {}
                values |= {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in binary.items()}
            for k, v in values.items():
                env[prefix + k] = v
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            owner = _container_named(pod, source, container)
            env[name] = resource_value(owner, source["resourceFieldRef"], allocatable)
        else:
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                ref = source.get(key)
                if ref is None:
                    continue
                obj = lookup(kind, ref["name"])
                values = _decode((obj or {}).get("data") or {}, binary=kind == "Secret")
                if ref["key"] in values:
                    env[name] = values[ref["key"]]
                elif not ref.get("optional"):
                    if obj is None:
                        raise EnvError(f'{kind.lower()} "{ref["name"]}" not found')
                    where = f"{pod['metadata']['namespace']}/{ref['name']}"
                    raise EnvError(f"couldn't find key {ref['key']} in {kind} {where}")
                break
            else:
                raise EnvError(f"env {name}: valueFrom has no supported source")
    return env


def _container_named(pod: Obj, source: Obj, default: Obj) -> Obj:
    wanted = source["resourceFieldRef"].get("containerName")
    if not wanted:
        return default
    for c in (pod["spec"].get("containers") or []) + (pod["spec"].get("initContainers") or []):
        if c["name"] == wanted:
            return dict(c)
    raise EnvError(f"resourceFieldRef: no container named {wanted!r}")


def command_line(container: Obj, env: Mapping[str, str], image: ImageConfig | None) -> list[str]:
    """The argv a runtime would start, `$(VAR)` expanded: `command` replaces the image's ENTRYPOINT and drops
    its CMD; `args` replaces CMD. There are no images here: without a known image, `command` is required."""
    command = list(container.get("command") or [])
    args = container.get("args")
    if not command:
        if image is None or not image.entrypoint:
            raise EnvError(
                f"container {container['name']!r} sets no command and image {container.get('image')!r} is not one "
                "of this repository's images (docker/*.Dockerfile); this node agent runs no images"
            )
        command = list(image.entrypoint)
        if args is None:
            args = list(image.cmd)
    return [expand(str(a), env) for a in [*command, *(args or [])]]
