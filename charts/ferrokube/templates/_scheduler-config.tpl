{{/*
The scheduler's KubeSchedulerConfiguration, built as data and serialised with toYaml so no
value is pasted into YAML unquoted.
*/}}
{{- define "ferrokube.schedulerConfig" -}}
{{- $v := .values }}
{{- $profile := dict "schedulerName" $v.schedulerName }}
{{- with $v.plugins }}
{{- $_ := set $profile "plugins" . }}
{{- end }}
{{- with $v.pluginConfig }}
{{- $_ := set $profile "pluginConfig" . }}
{{- end }}
{{- $le := dict
  "leaderElect" $v.leaderElection.enabled
  "resourceLock" "leases"
  "resourceName" $v.leaderElection.resourceName
  "resourceNamespace" $v.leaderElection.resourceNamespace }}
{{- $cfg := dict
  "apiVersion" "kubescheduler.config.k8s.io/v1"
  "kind" "KubeSchedulerConfiguration"
  "leaderElection" $le
  "profiles" (list $profile) }}
{{- if not (kindIs "invalid" $v.percentageOfNodesToScore) }}
{{- $_ := set $cfg "percentageOfNodesToScore" (int $v.percentageOfNodesToScore) }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
