-- Argo CD health check for deepseek.ai/DeepSeekInference (Lua 5.1: Argo CD runs gopher-lua).
-- Ready with every replica updated and ready -> Healthy; a roll-out or scale-up in progress, Pending (e.g.
-- waiting for the training to succeed) or not yet observed -> Progressing; NotReady and Failed -> Degraded;
-- Stopped (replicas 0) -> Suspended.
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function message(status, types, fallback)
  for _, t in ipairs(types) do
    local c = condition(status, t)
    if c ~= nil and c.message ~= nil and c.message ~= "" then
      return c.message
    end
  end
  return fallback
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the model server"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
local want = 1
if obj.spec ~= nil and obj.spec.replicas ~= nil then
  want = obj.spec.replicas
end
local ready = status.readyReplicas or 0
local updated = status.updatedReplicas or 0

if phase == "Ready" then
  if updated < want then
    hs.status = "Progressing"
    hs.message = "Rolling out: " .. tostring(updated) .. " of " .. tostring(want) .. " replicas updated"
  elseif ready < want then
    hs.status = "Progressing"
    hs.message = "Scaling: " .. tostring(ready) .. " of " .. tostring(want) .. " replicas ready"
  else
    hs.status = "Healthy"
    local text = "Ready: " .. tostring(ready) .. "/" .. tostring(want) .. " replicas"
    if status.servedModelVersion ~= nil then
      text = text .. ", model " .. status.servedModelVersion
      if status.servedVariant ~= nil then
        text = text .. " (" .. status.servedVariant .. ")"
      end
    end
    if status.url ~= nil then
      text = text .. " at " .. status.url
    end
    hs.message = text
  end
elseif phase == "NotReady" or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message(status, { "Ready", phase }, phase)
elseif phase == "Stopped" then
  hs.status = "Suspended"
  hs.message = message(status, { "Stopped" }, "Stopped (spec.replicas is 0)")
elseif phase == "Pending" then
  hs.status = "Progressing"
  hs.message = message(status, { "Ready", "ModelReady" }, "Pending")
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
