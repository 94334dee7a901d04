"""The MonitorService servicer: decode the request, call the domain code, encode the answer."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from infermesh.common.v1 import common_pb2, events_pb2
from infermesh.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from infermesh_chassis.errors import InvalidArgument, NotFound
from infermesh_chassis.events import EVENT_SCHEMA_VERSION, encode_batch, hash_unit_id
from infermesh_monitor.drift import DriftEntry, DriftQueries, Samples
from infermesh_monitor.ingest import BatchResult, Ingestor
from infermesh_monitor.outcomes import METRICS, ArmOutcome, Labelled, OutcomeQueries, compare, metric_samples, test_for
from infermesh_monitor.settings import Settings
from infermesh_monitor.shadow import DEFAULT_TOLERANCE, ShadowQueries
from infermesh_monitor.slo import Figures, SloGate, SloResult, Thresholds
from infermesh_monitor.stats import StatsQueries, micros
from infermesh_monitor.traces import TraceQueries, check_trace_id

__all__ = ["MonitorServicer"]

_WINDOWS = {
    monitor_pb2.STATS_WINDOW_UNSPECIFIED: 60,
    monitor_pb2.STATS_WINDOW_1M: 60,
    monitor_pb2.STATS_WINDOW_5M: 300,
    monitor_pb2.STATS_WINDOW_1H: 3600,
}
_DIMENSIONS = {
    monitor_pb2.STATS_DIMENSION_SCENE: ("scene",),
    monitor_pb2.STATS_DIMENSION_VARIANT: ("variant",),
    monitor_pb2.STATS_DIMENSION_MODEL: ("model",),
    monitor_pb2.STATS_DIMENSION_MODEL_VERSION: ("model", "model_version"),
    monitor_pb2.STATS_DIMENSION_SOURCE_SERVICE: ("source_service",),
    monitor_pb2.STATS_DIMENSION_WORKER: ("worker",),
}
_DRIFT_LEVELS = {
    "unspecified": monitor_pb2.DRIFT_LEVEL_UNSPECIFIED,
    "none": monitor_pb2.DRIFT_LEVEL_NONE,
    "moderate": monitor_pb2.DRIFT_LEVEL_MODERATE,
    "significant": monitor_pb2.DRIFT_LEVEL_SIGNIFICANT,
}
_VERDICTS = {
    "pass": common_pb2.SLO_VERDICT_PASS,
    "fail": common_pb2.SLO_VERDICT_FAIL,
    "insufficient_data": common_pb2.SLO_VERDICT_INSUFFICIENT_DATA,
}
HOUR = 3600.0


def _seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def _range(window: common_pb2.TimeRange, default_s: float, now: float) -> tuple[float, float]:
    end = _seconds(window.end_time) if window.HasField("end_time") else now
    start = _seconds(window.start_time) if window.HasField("start_time") else end - default_s
    if start >= end:
        raise InvalidArgument(f"window start {start:.3f} is not before its end {end:.3f}")
    return start, end


def _time_range(start: float, end: float) -> common_pb2.TimeRange:
    return common_pb2.TimeRange(start_time=_timestamp(start), end_time=_timestamp(end))


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    """Thin adapter from the gRPC contract to the monitor's parts."""

    def __init__(
        self,
        *,
        settings: Settings,
        ingestor: Ingestor,
        stats: StatsQueries,
        shadow: ShadowQueries,
        drift: DriftQueries,
        outcomes: OutcomeQueries,
        slo: SloGate,
        traces: TraceQueries,
    ) -> None:
        self._settings = settings
        self._ingestor = ingestor
        self._stats = stats
        self._shadow = shadow
        self._drift = drift
        self._outcomes = outcomes
        self._slo = slo
        self._traces = traces

    # --- traces ------------------------------------------------------------------------------

    async def GetTrace(
        self, request: monitor_pb2.GetTraceRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.GetTraceResponse:
        key = request.WhichOneof("key")
        if key is None:
            raise InvalidArgument("set trace_id or request_id")
        if key == "trace_id":
            trace_id = check_trace_id(request.trace_id)
        else:
            if not request.request_id:
                raise InvalidArgument("request_id: empty; set a request id or a trace_id")
            found = await self._traces.trace_of_request(request.request_id)
            if found is None:
                raise NotFound(f"no stored trace carries request id {request.request_id!r}; was it sampled?")
            trace_id = found
        spans = await self._traces.spans(trace_id)
        if not spans:
            raise NotFound(f"no spans of trace {trace_id} are stored (not sampled, not yet exported, or expired)")
        response = monitor_pb2.GetTraceResponse(trace_id=trace_id)
        for span in spans:
            out = response.spans.add(
                trace_id=span.trace_id,
                span_id=span.span_id,
                parent_span_id=span.parent_span_id,
                service=span.service,
                name=span.name,
                kind=span.kind,
                duration_ms=span.duration_ms,
                status=span.status,
                status_message=span.status_message,
                request_id=span.request_id,
                degraded=span.degraded,
                fallback=span.fallback,
                attributes=span.attributes,
            )
            out.start.FromMicroseconds(span.start_us)
        for event in await self._traces.events(trace_id):
            stored = response.events.add(
                event_id=event.event_id,
                kind=event.kind,
                service=event.service,
                span_id=event.span_id,
                request_id=event.request_id,
            )
            stored.time.FromMicroseconds(event.time_us)
        return response

    async def ListTraces(
        self, request: monitor_pb2.ListTracesRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.ListTracesResponse:
        if not 0 <= request.limit <= 1000:
            raise InvalidArgument(f"limit: {request.limit}; between 1 and 1000 (0 means 10)")
        since_s = request.since.ToTimedelta().total_seconds() if request.HasField("since") else 600.0
        if since_s <= 0:
            raise InvalidArgument("since: must be a positive duration")
        response = monitor_pb2.ListTracesResponse()
        for row in await self._traces.slowest(request.scene, since_s, request.limit or 10):
            out = response.traces.add(
                trace_id=row.trace_id,
                request_id=row.request_id,
                scene=row.scene,
                root_service=row.root_service,
                root_name=row.root_name,
                duration_ms=row.duration_ms,
                spans=row.spans,
                error=row.error,
                degraded=row.degraded,
            )
            out.start.FromMicroseconds(row.start_us)
        return response

    # --- ingestion ---------------------------------------------------------------------------

    def _check_size(self, count: int) -> None:
        if count > self._settings.ingest.max_events_per_request:
            raise InvalidArgument(
                f"{count} events in one message; at most {self._settings.ingest.max_events_per_request} are accepted"
            )

    async def ReportEvents(
        self, request: monitor_pb2.ReportEventsRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.ReportEventsResponse:
        self._check_size(len(request.events))
        [result] = await self._ingestor.ingest([encode_batch(request.events)])
        return monitor_pb2.ReportEventsResponse(
            accepted=result.accepted, duplicates=result.duplicates, rejected_event_ids=result.rejected_event_ids
        )

    async def StreamEvents(
        self, request_iterator: AsyncIterator[monitor_pb2.StreamEventsRequest], context: grpc.aio.ServicerContext
    ) -> monitor_pb2.StreamEventsResponse:
        total = BatchResult()
        last_sequence = 0
        async for request in request_iterator:
            self._check_size(len(request.events))
            [result] = await self._ingestor.ingest([encode_batch(request.events)])
            total.accepted += result.accepted
            total.duplicates += result.duplicates
            total.rejected_event_ids.extend(result.rejected_event_ids)
            last_sequence = max(last_sequence, request.sequence)
        return monitor_pb2.StreamEventsResponse(
            accepted=total.accepted,
            duplicates=total.duplicates,
            rejected_event_ids=total.rejected_event_ids,
            last_sequence=last_sequence,
        )

    async def ReportFeedback(
        self, request: monitor_pb2.ReportFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.ReportFeedbackResponse:
        self._check_size(len(request.items))
        key = self._settings.events.unit_id_hash_key.get_secret_value()
        events = []
        for i, item in enumerate(request.items):
            subject = item.WhichOneof("subject")
            if subject is None or not getattr(item, subject):
                raise InvalidArgument(f"items[{i}]: set request_id or unit_id")
            if subject == "unit_id" and not item.scene:
                raise InvalidArgument(f"items[{i}]: a label by unit_id needs its scene")
            feedback = events_pb2.FeedbackEvent(
                target_request_id=item.request_id if subject == "request_id" else "",
                unit_id_hash=hash_unit_id(item.unit_id, key) if subject == "unit_id" else "",
                scene=item.scene,
                label_name=item.label_name,
                label=item.label,
            )
            if item.HasField("label_time"):
                feedback.label_time.CopyFrom(item.label_time)
            else:
                feedback.label_time.GetCurrentTime()
            event = events_pb2.Event(
                event_id=uuid.uuid4().hex,
                schema_version=EVENT_SCHEMA_VERSION,
                source=events_pb2.EventSource(service=self._settings.service_name, instance="ReportFeedback"),
                feedback=feedback,
            )
            event.time.GetCurrentTime()
            events.append(event)
        [result] = await self._ingestor.ingest([encode_batch(events)])
        return monitor_pb2.ReportFeedbackResponse(accepted=result.accepted)

    # --- stats and SLO -----------------------------------------------------------------------

    async def QueryStats(
        self, request: monitor_pb2.QueryStatsRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.QueryStatsResponse:
        window_s = _WINDOWS.get(request.window)
        if window_s is None:
            raise InvalidArgument(f"unknown stats window {request.window}")
        end = _seconds(request.end_time) if request.HasField("end_time") else time.time()
        start = end - window_s
        group_by: list[str] = []
        for dimension in request.group_by:
            columns = _DIMENSIONS.get(dimension)
            if columns is None:
                raise InvalidArgument(f"unknown stats dimension {dimension}")
            group_by.extend(c for c in columns if c not in group_by)
        f = request.filter
        filters: dict[str, str | int] = {
            key: value
            for key, value in (
                ("scene", f.scene),
                ("variant", f.variant),
                ("model", f.model),
                ("model_version", f.model_version),
                ("source_service", f.source_service),
            )
            if value
        }
        groups = await self._stats.groups(start, end, group_by, filters)
        rows = [
            monitor_pb2.StatsRow(
                group=monitor_pb2.StatsGroup(**g.group),  # type: ignore[arg-type]
                count=g.count,
                throughput_rps=g.count / window_s,
                p50_latency_ms=_finite(g.p50_ms),
                p95_latency_ms=_finite(g.p95_ms),
                p99_latency_ms=_finite(g.p99_ms),
                mean_latency_ms=_finite(g.mean_ms),
                error_rate=g.error_rate,
                degraded_rate=g.degraded_rate,
                error_count=g.errors,
                degraded_count=g.degraded,
            )
            for g in groups
        ]
        return monitor_pb2.QueryStatsResponse(window=_time_range(start, end), rows=rows)

    async def CheckSlo(
        self, request: monitor_pb2.CheckSloRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.CheckSloResponse:
        if not request.model or request.model_version <= 0:
            raise InvalidArgument("model and a model_version > 0 are required")
        window_s = request.window.ToTimedelta().total_seconds() or 300.0
        if window_s < 0:
            raise InvalidArgument("window must not be negative")
        end = _seconds(request.end_time) if request.HasField("end_time") else time.time()
        th = request.thresholds
        om = th.online_metric
        thresholds = Thresholds(
            max_p99_latency_ms=th.max_p99_latency_ms if th.HasField("max_p99_latency_ms") else None,
            max_p99_latency_ratio=th.max_p99_latency_ratio if th.HasField("max_p99_latency_ratio") else None,
            max_error_rate=th.max_error_rate if th.HasField("max_error_rate") else None,
            max_degraded_rate=th.max_degraded_rate if th.HasField("max_degraded_rate") else None,
            min_shadow_agreement=th.min_shadow_agreement if th.HasField("min_shadow_agreement") else None,
            online_metric=om.metric,
            online_min=om.min_value if om.HasField("min_value") else None,
            online_max=om.max_value if om.HasField("max_value") else None,
            online_max_regression=om.max_regression_vs_baseline if om.HasField("max_regression_vs_baseline") else None,
            online_min_labels=om.min_labels,
            online_label_name=om.label_name,
        )
        if thresholds.online_metric and thresholds.online_metric not in METRICS:
            raise InvalidArgument(f"unknown online metric {thresholds.online_metric!r} (one of {', '.join(METRICS)})")
        result = await self._slo.check(
            model=request.model,
            version=request.model_version,
            baseline_version=request.baseline_version,
            start_s=end - window_s,
            end_s=end,
            min_requests=request.min_requests,
            thresholds=thresholds,
            source=request.source_service,
        )
        evaluation = _evaluation(result, request.model, request.model_version, request.baseline_version)
        evaluation.window.CopyFrom(_time_range(end - window_s, end))
        return monitor_pb2.CheckSloResponse(evaluation=evaluation)

    # --- shadow, drift, experiments ------------------------------------------------------------

    async def GetShadowReport(
        self, request: monitor_pb2.GetShadowReportRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.GetShadowReportResponse:
        if not request.model:
            raise InvalidArgument("model is required")
        start, end = _range(request.window, HOUR, time.time())
        comparisons = await self._shadow.compare(
            request.model,
            start,
            end,
            primary_version=request.primary_version,
            shadow_version=request.shadow_version,
            tolerance=request.score_tolerance or DEFAULT_TOLERANCE,
        )
        return monitor_pb2.GetShadowReportResponse(
            window=_time_range(start, end),
            comparisons=[
                monitor_pb2.ShadowComparison(
                    model=c.model,
                    primary_version=c.primary_version,
                    shadow_version=c.shadow_version,
                    pairs=c.pairs,
                    shadow_errors=c.shadow_errors,
                    agreement_rate=c.agreement_rate,
                    mean_abs_score_diff=c.mean_abs_score_diff,
                    max_abs_score_diff=c.max_abs_score_diff,
                    mean_latency_delta_ms=c.mean_latency_delta_ms,
                    p99_latency_delta_ms=c.p99_latency_delta_ms,
                )
                for c in comparisons
            ],
        )

    async def GetDriftReport(
        self, request: monitor_pb2.GetDriftReportRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.GetDriftReportResponse:
        if not request.model or request.model_version <= 0:
            raise InvalidArgument("model and a model_version > 0 are required")
        if request.bins < 0 or request.bins == 1 or request.bins > 100:
            raise InvalidArgument("bins must be 0 (default) or between 2 and 100")
        now = time.time()
        start, end = _range(request.window, HOUR, now)
        source = request.baseline.WhichOneof("source")
        if source == "window":
            b_start, b_end = _range(request.baseline.window, HOUR, now)
            baseline = await self._drift.window_samples(request.model, request.model_version, b_start, b_end)
            description = f"window:{_iso(b_start)}/{_iso(b_end)}"
        else:
            baseline_id = request.baseline.baseline_id or await self._drift.registered_baseline(
                request.model, request.model_version
            )
            baseline = await self._drift.baseline_samples(baseline_id)
            description = f"{'registered' if source is None else 'baseline'}:{baseline_id}"
        current = await self._drift.window_samples(request.model, request.model_version, start, end)
        features, predictions = self._drift.report(
            baseline, current, request.features, request.bins or self._settings.analysis.drift_bins
        )

        def entry(e: DriftEntry) -> monitor_pb2.DriftEntry:
            return monitor_pb2.DriftEntry(
                name=e.name,
                psi=_finite(e.psi),
                level=_DRIFT_LEVELS[e.level],
                baseline_count=e.baseline_count,
                current_count=e.current_count,
                bins=[
                    monitor_pb2.HistogramBin(
                        lower=b.lower if math.isfinite(b.lower) else -1.7976931348623157e308,
                        upper=b.upper if math.isfinite(b.upper) else 1.7976931348623157e308,
                        category=b.category,
                        baseline_fraction=b.baseline_fraction,
                        current_fraction=b.current_fraction,
                    )
                    for b in e.bins
                ],
            )

        return monitor_pb2.GetDriftReportResponse(
            model=request.model,
            model_version=request.model_version,
            window=_time_range(start, end),
            baseline_description=description,
            features=[entry(e) for e in features],
            predictions=[entry(e) for e in predictions],
        )

    async def RegisterBaseline(
        self, request: monitor_pb2.RegisterBaselineRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.RegisterBaselineResponse:
        if not request.model or request.model_version <= 0:
            raise InvalidArgument("model and a model_version > 0 are required")
        baseline_id = request.baseline_id or f"{request.model}/{request.model_version}"
        source = request.WhichOneof("source")
        if source == "samples":
            samples: dict[str, Samples] = {}
            for i, feature in enumerate(request.samples.features):
                kind = feature.WhichOneof("values")
                if not feature.name or kind is None:
                    raise InvalidArgument(
                        f"samples.features[{i}]: a name and numeric or categorical values are required"
                    )
                values = list(feature.numeric.values) if kind == "numeric" else list(feature.categorical.values)
                sample = samples.setdefault(feature.name, Samples())
                (sample.numbers if kind == "numeric" else sample.categories).extend(values)  # type: ignore[arg-type]
            described = "samples"
        elif source == "uri":
            samples = await self._drift.file_samples(request.uri, request.sha256)
            described = f"uri:{request.uri}"
        elif source == "window":
            start, end = _range(request.window, HOUR, time.time())
            samples = await self._drift.window_samples(request.model, request.model_version, start, end)
            described = f"window:{_iso(start)}/{_iso(end)}"
        else:
            raise InvalidArgument("set one of samples, uri or window")
        if not samples:
            raise NotFound("no samples found for the baseline")
        counts = await self._drift.register(
            model=request.model,
            version=request.model_version,
            baseline_id=baseline_id,
            description=request.description,
            samples=samples,
            source=described,
        )
        return monitor_pb2.RegisterBaselineResponse(baseline_id=baseline_id, sample_counts=counts)

    async def GetExperimentReport(
        self, request: monitor_pb2.GetExperimentReportRequest, context: grpc.aio.ServicerContext
    ) -> monitor_pb2.GetExperimentReportResponse:
        if not request.experiment:
            raise InvalidArgument("experiment is required")
        level = request.confidence_level or 0.95
        if not 0.5 <= level < 1:
            raise InvalidArgument("confidence_level must be in [0.5, 1)")
        unknown = [m for m in request.metrics if m not in METRICS]
        if unknown:
            raise InvalidArgument(f"unknown metrics {unknown} (known: {', '.join(METRICS)})")
        start, end = _range(request.window, 10 * 365 * 24 * HOUR, time.time())
        conversions = await self._outcomes.conversions(
            request.experiment, request.layer, start, end, request.label_name
        )
        if not conversions:
            raise NotFound(f"no exposures of experiment {request.experiment!r} in the window")
        layers = sorted({layer for layer, _ in conversions})
        reports = []
        for layer in layers:
            variants = sorted(v for lay, v in conversions if lay == layer)
            control = request.control_variant or ("control" if "control" in variants else variants[0])
            labelled = await self._outcomes.labelled(
                "variant",
                "(variant, unit_id_hash) IN (SELECT variant, unit_id_hash FROM exposure_events"
                " WHERE experiment = {experiment:String} AND layer = {layer:String})"
                " AND time >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')"
                " AND time < fromUnixTimestamp64Micro({end:Int64}, 'UTC')",
                {"experiment": request.experiment, "layer": layer, "start": micros(start), "end": micros(end)},
                request.label_name,
            )
            served = await self._outcomes.variant_serving(request.experiment, layer, start, end)
            metrics = list(request.metrics) or _default_metrics(labelled)
            for metric in metrics:
                arms = []
                for variant in variants:
                    if metric == "conversion_rate":
                        samples = conversions[(layer, variant)]
                    else:
                        data = labelled.get(variant)
                        samples = metric_samples(metric, data, request.label_name) if data else _empty(metric)
                    arms.append(ArmOutcome(variant, samples))
                results = compare(metric, arms, control, level, self._settings.analysis.bootstrap_resamples)
                reports.append(
                    monitor_pb2.MetricReport(
                        metric=metric,
                        layer=layer,
                        test=test_for(metric),
                        variants=[
                            monitor_pb2.VariantResult(
                                variant=r.name,
                                control=r.name == control,
                                units=len(conversions[(layer, r.name)]),
                                predictions=served.get(r.name, (0, 0.0, 0.0))[0],
                                labelled=labelled[r.name].count if r.name in labelled else 0,
                                value=_finite(r.value),
                                ci_lower=_finite(r.ci[0]),
                                ci_upper=_finite(r.ci[1]),
                                delta=_finite(r.delta),
                                delta_ci_lower=_finite(r.delta_ci[0]),
                                delta_ci_upper=_finite(r.delta_ci[1]),
                                p_value=_finite(r.p_value),
                                significant=r.significant,
                                p99_latency_ms=served.get(r.name, (0, 0.0, 0.0))[1],
                                error_rate=served.get(r.name, (0, 0.0, 0.0))[2],
                            )
                            for r in results
                        ],
                    )
                )
        return monitor_pb2.GetExperimentReportResponse(
            experiment=request.experiment, window=_time_range(start, end), confidence_level=level, reports=reports
        )


def _empty(metric: str) -> np.ndarray:
    return np.empty((0, 2)) if metric == "auc" else np.empty(0)


def _default_metrics(labelled: dict[str, Labelled]) -> list[str]:
    """Conversion rate always; accuracy and AUC for class labels; rmse and mae for numeric ones."""
    texts = [t for data in labelled.values() for t in data.truth_text[:100]]
    if not texts:
        return ["conversion_rate"]
    numeric = all(_is_float(t) for t in texts) and any("." in t for t in texts)
    return ["conversion_rate", "rmse", "mae"] if numeric else ["conversion_rate", "accuracy", "auc"]


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _figures(f: Figures) -> common_pb2.SloFigures:
    figures = common_pb2.SloFigures(
        requests=f.requests,
        p50_latency_ms=_finite(f.p50_ms),
        p95_latency_ms=_finite(f.p95_ms),
        p99_latency_ms=_finite(f.p99_ms),
        error_rate=f.error_rate,
        degraded_rate=f.degraded_rate,
        labels=f.labels,
    )
    if f.shadow_agreement is not None:
        figures.shadow_agreement = f.shadow_agreement
    if f.online_metric is not None and math.isfinite(f.online_metric):
        figures.online_metric = f.online_metric
    return figures


def _evaluation(result: SloResult, model: str, version: int, baseline_version: int) -> common_pb2.SloEvaluation:
    evaluation = common_pb2.SloEvaluation(
        verdict=_VERDICTS[result.verdict],
        model=model,
        version=version,
        baseline_version=baseline_version,
        figures=_figures(result.figures),
        reasons=result.reasons,
    )
    if result.baseline_figures is not None:
        evaluation.baseline_figures.CopyFrom(_figures(result.baseline_figures))
    for c in result.criteria:
        criterion = common_pb2.SloCriterion(
            name=c.name, observed=_finite(c.observed), threshold=c.threshold, passed=c.passed, detail=c.detail
        )
        if c.baseline_observed is not None:
            criterion.baseline_observed = c.baseline_observed
        evaluation.criteria.append(criterion)
    evaluation.evaluate_time.GetCurrentTime()
    return evaluation
