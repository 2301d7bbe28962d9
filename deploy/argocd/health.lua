-- Argo CD health check for ramp.dev Rollouts. Install it under
-- resource.customizations.health.ramp.dev_Rollout in argocd-cm (see README).
local hs = {}
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ramp controller to observe the rollout"
  return hs
end
local status = obj.status
if obj.metadata.generation ~= nil and status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ramp controller to observe the latest spec"
  return hs
end
local message = status.message or ""
if status.phase == "Healthy" then
  hs.status = "Healthy"
elseif status.phase == "Paused" then
  hs.status = "Suspended"
elseif status.phase == "Degraded" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = message
return hs
