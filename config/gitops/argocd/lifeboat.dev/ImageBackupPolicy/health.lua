-- Argo CD health check for lifeboat.dev/ImageBackupPolicy.
-- Follows kstatus (what Flux uses): an unobserved generation or
-- Reconciling=True is Progressing, Stalled=True is Degraded, Ready=True is
-- Healthy. Stricter than kstatus where Argo CD users want to see it: a
-- suspended policy is Suspended, a policy whose protected images have gone
-- missing from their source registry, or whose source registry cannot be
-- reached (ImagesAvailable=False: ImagesMissing, SourceUnreachable), is Degraded,
-- and Ready=False is Degraded unless the first backup is still pending.
-- Source: config/gitops/argocd (docs/gitops.md); tested by hack/tools/lifeboat-health.
local hs = {}

local function condition(conditionType)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

local generation = obj.metadata.generation
local observed = nil
if obj.status ~= nil then
  observed = obj.status.observedGeneration
end

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Being deleted"
  return hs
end
if observed == nil or (generation ~= nil and observed ~= generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Lifeboat operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Suspended: no scheduled or continuous backups (spec.suspend)"
  return hs
end

local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
  return hs
end

local available = condition("ImagesAvailable")
if available ~= nil and available.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(available)
  return hs
end

local ready = condition("Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
elseif ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
elseif ready.status == "False" and ready.reason ~= "NoBackupYet" then
  hs.status = "Degraded"
  hs.message = describe(ready)
else
  hs.status = "Progressing"
  hs.message = describe(ready)
end
return hs
