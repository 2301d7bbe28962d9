-- Argo CD health check for ramp.dev Rollouts. Install it under
-- resource.customizations.health.ramp.dev_Rollout in argocd-cm (README,
-- "Argo CD"; the Helm chart's argocd.healthCheck value renders that key).
-- What a pause reports:
--   * spec.paused (an operator froze the rollout): Suspended.
--   * a pause that ends by itself (a timed pause step, blue/green
--     autoPromotionSeconds): Progressing, so a sync waits for it.
--   * a pause that waits for a person or a webhook (a pause step without a
--     duration, blue/green without auto-promotion, a webhook gate, an
--     inconclusive analysis): Healthy, with the wait in the message. What
--     Git asked for is applied and every pod serves; reporting Suspended
--     here would hold PostSync hooks until someone promotes (argo-cd #19422).
local hs = {}

local function condition(name)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == name then
      return c
    end
  end
  return nil
end

local function has_pause(reason)
  if obj.status.pauseConditions == nil then
    return false
  end
  for _, p in ipairs(obj.status.pauseConditions) do
    if p.reason == reason then
      return true
    end
  end
  return false
end

-- True when the pause in effect ends without anyone acting.
local function pause_ends_by_itself()
  local strategy = obj.spec.strategy or {}
  if has_pause("InconclusiveAnalysisRun") or has_pause("PendingWebhook") then
    return false
  end
  if has_pause("CanaryPauseStep") and strategy.canary ~= nil and strategy.canary.steps ~= nil then
    local step = strategy.canary.steps[(obj.status.currentStepIndex or 0) + 1]
    return step ~= nil and step.pause ~= nil and step.pause.duration ~= nil
  end
  if has_pause("BlueGreenPause") and strategy.blueGreen ~= nil then
    local bg = strategy.blueGreen
    return bg.autoPromotionEnabled ~= false and (bg.autoPromotionSeconds or 0) > 0
  end
  return false
end

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
local invalid = condition("InvalidSpec")
if invalid ~= nil and invalid.status == "True" then
  hs.status = "Degraded"
  hs.message = invalid.message
  return hs
end
local message = status.message or ""
if status.phase == "Healthy" then
  hs.status = "Healthy"
elseif status.phase == "Degraded" then
  hs.status = "Degraded"
elseif obj.spec.paused == true then
  hs.status = "Suspended"
  if message == "" then
    message = "manually paused"
  end
elseif status.phase == "Paused" then
  if pause_ends_by_itself() then
    hs.status = "Progressing"
  else
    hs.status = "Healthy"
    message = "Paused, waiting for promotion or a webhook: " .. message
  end
else
  hs.status = "Progressing"
end
hs.message = message
return hs
