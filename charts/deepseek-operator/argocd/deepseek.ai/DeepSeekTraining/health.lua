-- Argo CD health check for deepseek.ai/DeepSeekTraining (Lua 5.1: Argo CD runs gopher-lua).
-- Succeeded -> Healthy; Failed -> Degraded; Suspended -> Suspended; Pending, Running, Quantizing and
-- anything not yet observed by the operator -> Progressing. The message comes from the operator's status.
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

-- The message of the first of these condition types that has one.
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
  hs.message = "Waiting for the operator to pick up the training"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  local text = "Succeeded"
  if status.artifacts ~= nil and status.artifacts.version ~= nil then
    text = text .. ": artifact " .. status.artifacts.version
    if status.artifacts.defaultVariant ~= nil then
      text = text .. " (" .. status.artifacts.defaultVariant .. ")"
    end
  end
  if status.metrics ~= nil and status.metrics.accuracy ~= nil then
    text = text .. ", accuracy " .. string.format("%.4f", status.metrics.accuracy)
  end
  hs.message = text
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message(status, { "Failed", "Succeeded", "Ready", "Running" }, "Failed")
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message(status, { "Suspended" }, "Suspended (spec.runPolicy.suspend is true)")
elseif phase == "Running" or phase == "Quantizing" or phase == "Pending" then
  hs.status = "Progressing"
  local text = phase
  local p = status.progress
  if p ~= nil and p.totalSteps ~= nil and p.totalSteps > 0 then
    text = text .. ": step " .. tostring(p.step or 0) .. "/" .. tostring(p.totalSteps)
    if p.percent ~= nil then
      text = text .. " (" .. tostring(p.percent) .. "%)"
    end
  else
    local m = message(status, { phase, "Running", "Ready" }, nil)
    if m ~= nil then
      text = text .. ": " .. m
    end
  end
  hs.message = text
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
