package io.flywheel.flink;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.runtime.state.StateInitializationContext;
import org.apache.flink.runtime.state.StateSnapshotContext;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonEncoding;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonGenerator;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * What the online writer receives from one feature view: batches of each key's latest window value, as
 * Row(feature_view, rows) with rows a JSON array of [entity_keys, window_end_ms, feature_values], as UTF-8
 * bytes (Flink serializes a String char by char, which is costly for batches of ~100 KB).
 *
 * <p>Input: the view's rows as they leave its aggregation (keys, then features, then event_timestamp,
 * the window end), typed. One instance per view, chained to the aggregation: a row is kept by reference,
 * and only the values that survive to a hand-over are turned into JSON (most are overwritten by the key's
 * next value before any write).
 *
 * <p>Latest per key: Redis keeps only a key's newest value, so of the successive values a key gets
 * between two hand-overs only the last is worth a Feast write. When hand-overs happen:
 *
 * <ul>
 *   <li>live (the watermark within {@code liveLagMs} of the wall clock): at every watermark step, so a
 *       value reaches the writer as soon as its window fires;
 *   <li>replaying or catching up: at the first checkpoint {@code catchUpFlushMs} after the last hand-over.
 *       Event time then races through many slides per second, and the Python writes are what the job
 *       spends most on: the longer a key's values collapse, the fewer. (Redis may then lag by that much
 *       more while the job catches up; a live job is not affected);
 *   <li>at the end of the input.
 * </ul>
 *
 * <p>Exactly-once: values not handed over yet are operator state (checkpointed, restored after a
 * failure or from a savepoint), and what was handed over before a barrier the Python writer writes to
 * Redis before the barrier passes it, since PyFlink finishes its bundle first. A completed checkpoint
 * therefore covers every value either in Redis or in its state. A replay after a failure rewrites
 * values with the same timestamps, which Feast's Redis store skips.
 *
 * <p>Batching in the JVM also means one trip into Python per batch, not per value.
 */
public class OnlineBatches extends AbstractStreamOperator<Row> implements OneInputStreamOperator<Row, Row> {
    private static final JsonFactory JSON = new JsonFactory();
    private final String featureView;
    private final String[] keys;
    private final String[] features;
    private final boolean[] epochMs;
    private final TypeInformation<Row> rowType;
    private final int batchSize;
    private final long liveLagMs;
    private final long catchUpFlushMs;
    private transient Map<String, Row> latest;
    private transient ListState<Row> pending;
    private transient long lastHandOverMs;
    private transient boolean live;

    /**
     * @param keys the entity key columns, comma-separated (the row's first columns)
     * @param features the feature columns that follow them, comma-separated
     * @param timestampFeatures those of the features that are timestamps (sent as epoch milliseconds)
     * @param rowType the input's type (the operator state keeps pending rows in it)
     */
    public OnlineBatches(
            String featureView,
            String keys,
            String features,
            String timestampFeatures,
            TypeInformation<Row> rowType,
            int batchSize,
            long liveLagMs,
            long catchUpFlushMs) {
        this.featureView = featureView;
        this.keys = keys.split(",");
        this.features = features.split(",");
        List<String> stamps = List.of(timestampFeatures.isEmpty() ? new String[0] : timestampFeatures.split(","));
        this.epochMs = new boolean[this.features.length];
        for (int i = 0; i < this.features.length; i++) {
            epochMs[i] = stamps.contains(this.features[i]);
        }
        this.rowType = rowType;
        this.batchSize = batchSize;
        this.liveLagMs = liveLagMs;
        this.catchUpFlushMs = catchUpFlushMs;
    }

    @Override
    public void initializeState(StateInitializationContext context) throws Exception {
        super.initializeState(context);
        latest = new HashMap<>();
        pending = context.getOperatorStateStore()
                .getListState(new ListStateDescriptor<>("pending-online-values-" + featureView, rowType));
        for (Row row : pending.get()) {
            keep(row);
        }
        lastHandOverMs = System.currentTimeMillis();
    }

    /**
     * Hands the writer an empty batch at once. PyFlink opens a Python function (for the writer: importing
     * Feast and reading its registry, seconds) only when its first element arrives; without this, the first
     * window values of a freshly started job waited for that.
     */
    @Override
    public void open() throws Exception {
        super.open();
        output.collect(new StreamRecord<>(Row.of(featureView, new byte[] {'[', ']'})));
    }

    @Override
    public void processElement(StreamRecord<Row> element) {
        // A copy: object reuse is on (the caller may recycle `row`), and it is kept past this call.
        keep(Row.copy(element.getValue()));
    }

    private void keep(Row row) {
        String key = RowKey.join(row, keys.length);
        Row seen = latest.get(key);
        if (seen == null || !windowEnd(row).isBefore(windowEnd(seen))) {
            latest.put(key, row);
        }
    }

    private static LocalDateTime windowEnd(Row row) {
        return (LocalDateTime) row.getField(row.getArity() - 1);
    }

    private static long epochMillis(Object timestamp) {
        return ((LocalDateTime) timestamp).toInstant(ZoneOffset.UTC).toEpochMilli();
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        live = mark.getTimestamp() >= System.currentTimeMillis() - liveLagMs;
        if (live) {
            handOver();
        }
        super.processWatermark(mark);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        if (live || System.currentTimeMillis() - lastHandOverMs >= catchUpFlushMs) {
            handOver();
        }
        super.prepareSnapshotPreBarrier(checkpointId);
    }

    @Override
    public void snapshotState(StateSnapshotContext context) throws Exception {
        super.snapshotState(context);
        pending.update(new ArrayList<>(latest.values()));
    }

    @Override
    public void finish() throws Exception {
        handOver();
        super.finish();
    }

    private void handOver() throws IOException {
        lastHandOverMs = System.currentTimeMillis();
        if (latest.isEmpty()) {
            return; // live, most watermark steps fire no window
        }
        List<Row> rows = new ArrayList<>(latest.values());
        latest.clear();
        for (int start = 0; start < rows.size(); start += batchSize) {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            try (JsonGenerator json = JSON.createGenerator(out, JsonEncoding.UTF8)) {
                json.writeStartArray();
                for (Row row : rows.subList(start, Math.min(start + batchSize, rows.size()))) {
                    writeValue(json, row);
                }
                json.writeEndArray();
            }
            output.collect(new StreamRecord<>(Row.of(featureView, out.toByteArray())));
        }
    }

    /** [{"key": ...}, window_end_ms, {"feature": value, ...}]; a non-finite number is written as null. */
    private void writeValue(JsonGenerator json, Row row) throws IOException {
        json.writeStartArray();
        json.writeStartObject();
        for (int i = 0; i < keys.length; i++) {
            json.writeStringField(keys[i], (String) row.getField(i));
        }
        json.writeEndObject();
        json.writeNumber(epochMillis(windowEnd(row)));
        json.writeStartObject();
        for (int i = 0; i < features.length; i++) {
            Object v = row.getField(keys.length + i);
            json.writeFieldName(features[i]);
            if (v == null || (v instanceof Double && !Double.isFinite((Double) v))) {
                json.writeNull();
            } else if (epochMs[i]) {
                json.writeNumber(epochMillis(v));
            } else if (v instanceof Double) {
                json.writeNumber((Double) v);
            } else {
                json.writeNumber((Long) v);
            }
        }
        json.writeEndObject();
        json.writeEndArray();
    }
}
