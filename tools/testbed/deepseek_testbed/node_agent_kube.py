"""The node agent's Kubernetes API client: JSON in and out over httpx (a kubelet speaks to the API server in
plain REST; lightkube's typed models get in the way of status patches, preconditions and raw watches)."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

Obj = dict[str, Any]


class KubeError(Exception):
    def __init__(self, code: int, message: str, reason: str = "") -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


def path_of(api_version: str, plural: str, namespace: str | None = None, name: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace is not None:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{name}"
    return base


class Kube:
    """A minimal async client for one identity (client certificate or bearer token) from a kubeconfig."""

    def __init__(self, kubeconfig: Path, *, user_agent: str = "deepseek-node-agent") -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        context_name = config["current-context"]
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        self.server: str = cluster["server"]
        ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
        headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if "client-certificate" in user:
            ctx.load_cert_chain(user["client-certificate"], user["client-key"])
        if "token" in user:
            headers["Authorization"] = f"Bearer {user['token']}"
        self._http = httpx.AsyncClient(base_url=self.server, verify=ctx, headers=headers, timeout=30.0)

    async def close(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        resp = await self._http.request(
            method,
            path,
            params=params,
            content=None if body is None else json.dumps(body),
            headers={"Content-Type": content_type} if body is not None else None,
        )
        if resp.status_code >= 400:
            raise _error(resp.status_code, resp.text)
        data: Obj = resp.json() if resp.content else {}
        return data

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Obj:
        return await self.request("GET", path, params=params)

    async def get_or_none(self, path: str) -> Obj | None:
        try:
            return await self.get(path)
        except KubeError as e:
            if e.code == 404:
                return None
            raise

    async def create(self, path: str, body: Obj) -> Obj:
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, body: Obj) -> Obj:
        return await self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    async def delete(self, path: str, body: Obj | None = None) -> Obj:
        return await self.request("DELETE", path, body=body)

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[Obj]:
        """Events of one watch request (ends when the server closes it; 410 Gone raises KubeError)."""
        query = {**params, "watch": "1", "allowWatchBookmarks": "true"}
        async with self._http.stream("GET", path, params=query, timeout=httpx.Timeout(30.0, read=None)) as resp:
            if resp.status_code >= 400:
                raise _error(resp.status_code, (await resp.aread()).decode())
            async for line in resp.aiter_lines():
                if line.strip():
                    event: Obj = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object", {})
                        code = int(status.get("code", 500))
                        raise KubeError(code, status.get("message", ""), status.get("reason", ""))
                    yield event


def _error(code: int, text: str) -> KubeError:
    try:
        status = json.loads(text)
        return KubeError(code, status.get("message", text), status.get("reason", ""))
    except (ValueError, AttributeError):
        return KubeError(code, text)
