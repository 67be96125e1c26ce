{{- /*
The recording and alerting rules, from prometheusRule in values.yaml: the one source of
both the PrometheusRule and dashboards/koodrive-rules.yaml (scripts/generate renders this
with the default values; a test fails when the two differ). docs/runbook.md explains each
alert; docs/dashboards.md the recording rules.

One group: Prometheus evaluates a group's rules in order, so the alerts always see the
recording rules of the same evaluation (across groups the order is not defined).
Annotations carry Prometheus' own template syntax, kept as Go string literals here.
*/ -}}
{{- define "koodrive-exporter.rules" -}}
{{- $v := .Values.prometheusRule }}
{{- $a := $v.alerts }}
{{- $account := "{{ $labels.account }}" }}
{{- $collector := "{{ $labels.collector }}" }}
{{- $instance := "{{ $labels.instance }}" }}
{{- $job := "{{ $labels.job }}" }}
{{- $percent := "{{ $value | humanizePercentage }}" }}
{{- $duration := "{{ $value | humanizeDuration }}" }}
{{- $rules := list
  (dict "record" "account:koodrive_space_utilization:ratio"
        "expr" "koodrive_space_used_bytes / (koodrive_space_capacity_bytes > 0)")
  (dict "record" "account:koodrive_space_free:bytes"
        "expr" "clamp_min(koodrive_space_capacity_bytes - koodrive_space_used_bytes, 0)")
  (dict "record" "account:koodrive_space_used_bytes:growth_per_day"
        "expr" "deriv(koodrive_space_used_bytes[6h]) * 86400")
  (dict "record" "account:koodrive_space_full_in:seconds"
        "expr" "account:koodrive_space_free:bytes\n  / (account:koodrive_space_used_bytes:growth_per_day > 0) * 86400\n")
  (dict "record" "account:koodrive_subscription_seats_used:ratio"
        "expr" "koodrive_subscription_users / (koodrive_subscription_users_limit > 0)")
}}
{{- $alerts := list }}
{{- /* FillingUp leaves out what AlmostFull calls critical (by that severity's name). */}}
{{- $full := "" }}
{{- with (($a.KooDriveSpaceAlmostFull | default dict).critical) }}
{{- $full = printf "\n  and account:koodrive_space_utilization:ratio < %v" .threshold }}
{{- end }}
{{- range $severity, $s := $a.KooDriveSpaceAlmostFull }}
{{- $alerts = append $alerts (dict "alert" "KooDriveSpaceAlmostFull" "severity" $severity "s" $s
  "expr" (printf "account:koodrive_space_utilization:ratio > %v" $s.threshold)
  "summary" (printf "KooDrive space of %s is %s used." $account $percent)
  "description" (printf "Account %s has used more than %v %% of its KooDrive space quota for %s. Free space or raise the quota before uploads fail." $account (round (mulf $s.threshold 100) 2) $s.for)) }}
{{- end }}
{{- range $severity, $s := $a.KooDriveSpaceFillingUp }}
{{- $alerts = append $alerts (dict "alert" "KooDriveSpaceFillingUp" "severity" $severity "s" $s
  "expr" (printf "account:koodrive_space_free:bytes\n  / (deriv(koodrive_space_used_bytes[%s]) > 0)\n  < %v * 3600%s\n" $s.trend $s.hours $full)
  "summary" (printf "KooDrive space of %s will be full within %v hours." $account $s.hours)
  "description" (printf "At the growth trend of the last %s, account %s fills its KooDrive space quota in %s." $s.trend $account $duration)) }}
{{- end }}
{{- range $severity, $s := $a.KooDriveSeatsAlmostExhausted }}
{{- $alerts = append $alerts (dict "alert" "KooDriveSeatsAlmostExhausted" "severity" $severity "s" $s
  "expr" (printf "account:koodrive_subscription_seats_used:ratio > %v" $s.threshold)
  "summary" (printf "KooDrive seats of %s are %s taken." $account $percent)
  "description" (printf "Account %s has created more than %v %% of the users its subscription allows, for %s. Remove unused users or buy more seats." $account (round (mulf $s.threshold 100) 2) $s.for)) }}
{{- end }}
{{- /* Ages are taken at the scrape (timestamp()), not at evaluation, so the delay between
scrape and rule evaluation never counts against a fast collector; one that has not succeeded
since the exporter started counts from the start. */}}
{{- range $severity, $s := $a.KooDriveMetricsStale }}
{{- $alerts = append $alerts (dict "alert" "KooDriveMetricsStale" "severity" $severity "s" $s
  "expr" "timestamp(koodrive_collector_last_success_timestamp_seconds)\n  - koodrive_collector_last_success_timestamp_seconds\n  > on (job, instance, account, collector) koodrive_collector_stale_after_seconds\nor\n  (\n    timestamp(koodrive_collector_up == 0)\n    - on (job, instance) group_left process_start_time_seconds\n  )\n  > on (job, instance, account, collector) koodrive_collector_stale_after_seconds\n  unless on (job, instance, account, collector) koodrive_collector_last_success_timestamp_seconds\n"
  "summary" (printf "KooDrive data of %s (%s) is stale." $account $collector)
  "description" (printf "koodrive-exporter has not polled the %s collector of account %s successfully for %s, longer than its stale_after (or since the exporter started); its metrics are gone from /metrics. koodrive_collector_last_failure tells the reason." $collector $account $duration)) }}
{{- end }}
{{- range $severity, $s := $a.KooDriveAuthFailing }}
{{- $alerts = append $alerts (dict "alert" "KooDriveAuthFailing" "severity" $severity "s" $s
  "expr" "koodrive_collector_last_failure{reason=\"auth\"} == 1"
  "summary" (printf "KooDrive rejects the credentials of %s." $account)
  "description" (printf "The last poll of the %s collector of account %s was refused for its credentials, for %s. Check its AppId/AppSecret or token, the user id and the exporter's clock." $collector $account $s.for)) }}
{{- end }}
{{- range $severity, $s := $a.KooDriveClockSkew }}
{{- $alerts = append $alerts (dict "alert" "KooDriveClockSkew" "severity" $severity "s" $s
  "expr" (printf "max by (job, instance) (abs(koodrive_clock_skew_seconds)) > %v" $s.seconds)
  "summary" (printf "Clock of koodrive-exporter %s is off from KooDrive's." $instance)
  "description" "The exporter's clock differs from KooDrive's by {{ $value | humanize }} seconds. The exporter compensates when signing, but the host's NTP needs fixing.") }}
{{- end }}
{{- range $severity, $s := $a.KooDriveConfigReloadFailed }}
{{- $alerts = append $alerts (dict "alert" "KooDriveConfigReloadFailed" "severity" $severity "s" $s
  "expr" "koodrive_exporter_config_last_reload_successful == 0"
  "summary" (printf "koodrive-exporter %s failed to reload its configuration." $instance)
  "description" (printf "The last configuration reload of %s failed; the exporter keeps polling with the configuration it had. Its log says which key is wrong." $instance)) }}
{{- end }}
{{- range $severity, $s := $a.KooDriveExporterDown }}
{{- $alerts = append $alerts (dict "alert" "KooDriveExporterDown" "severity" $severity "s" $s
  "expr" (printf "up{%s} == 0" $v.jobMatcher)
  "summary" (printf "koodrive-exporter %s cannot be scraped." $instance)
  "description" (printf "Prometheus has failed to scrape %s at %s for %s; no KooDrive space data is being collected from it." $job $instance $s.for)) }}
{{- end }}
{{- range $severity, $s := $a.KooDriveExporterAbsent }}
{{- $alerts = append $alerts (dict "alert" "KooDriveExporterAbsent" "severity" $severity "s" $s
  "expr" (printf "absent(up{%s})" $v.jobMatcher)
  "summary" "No koodrive-exporter is being scraped."
  "description" (printf "Prometheus has had no target matching %s for %s: the exporter is gone from service discovery, so no KooDrive data is collected and no other KooDrive alert can fire." $v.jobMatcher $s.for)) }}
{{- end }}
{{- range $alerts }}
{{- if and .s (not (index ($v.disabled | default dict) .alert)) }}
{{- $labels := merge (dict "severity" .severity) ($v.additionalLabels | default dict) }}
{{- $annotations := merge (dict "summary" .summary "description" .description "runbook_url" (printf "%s#%s" $v.runbookUrl (lower .alert))) ($v.additionalAnnotations | default dict) }}
{{- $rules = append $rules (dict "alert" .alert "expr" .expr "for" .s.for "labels" $labels "annotations" $annotations) }}
{{- end }}
{{- end }}
{{- $groups := list (dict "name" "koodrive" "rules" (concat $rules ($v.additionalRules | default list))) }}
{{- toYaml $groups }}
{{- end }}
