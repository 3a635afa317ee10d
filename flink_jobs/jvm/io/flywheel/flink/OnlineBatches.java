package io.flywheel.flink;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * What the online writer receives: batches of each key's latest window value, as Row(feature_view,
 * rows) with rows a JSON array of [entity_keys, window_end_ms, feature_values].
 *
 * <p>Latest per key: Redis keeps only a key's newest value, so of the successive values a key gets
 * between two hand-overs only the last is worth a Feast write. When hand-overs happen:
 *
 * <ul>
 *   <li>live (the watermark within {@code liveLagMs} of the wall clock): at every watermark step, so a
 *       value reaches the writer as soon as its window fires;
 *   <li>replaying or catching up: at checkpoints only. Event time then races through many slides per
 *       second, and a key's values between two checkpoints collapse into one write;
 *   <li>always before a checkpoint barrier and at the end of the input.
 * </ul>
 *
 * <p>Exactly-once without state: everything is handed over before each barrier, and the Python
 * writer (chained next) finishes its bundle, i.e. writes it to Redis, before the barrier passes it.
 * A completed checkpoint therefore covers only values already in Redis; a replay after a failure
 * rewrites the same values with the same timestamps, which Feast's Redis store skips.
 *
 * <p>Batching in the JVM also means one trip into Python per batch, not per value.
 */
public class OnlineBatches extends AbstractStreamOperator<Row> implements OneInputStreamOperator<Row, Row> {
    private final int batchSize;
    private final long liveLagMs;
    private transient Map<String, Row> latest;

    public OnlineBatches(int batchSize, long liveLagMs) {
        this.batchSize = batchSize;
        this.liveLagMs = liveLagMs;
    }

    @Override
    public void open() throws Exception {
        super.open();
        latest = new HashMap<>();
    }

    /** in: (feature_view, entity_keys JSON, window_end_ms, feature_values JSON) */
    @Override
    public void processElement(StreamRecord<Row> element) {
        Row row = element.getValue();
        String key = row.getField(0) + "\u0000" + row.getField(1);
        Row seen = latest.get(key);
        if (seen == null || (Long) seen.getField(2) <= (Long) row.getField(2)) {
            latest.put(key, Row.copy(row)); // object reuse is on: the caller recycles `row`
        }
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        if (mark.getTimestamp() >= System.currentTimeMillis() - liveLagMs) {
            emit();
        }
        super.processWatermark(mark);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        emit();
        super.prepareSnapshotPreBarrier(checkpointId);
    }

    @Override
    public void finish() throws Exception {
        emit();
        super.finish();
    }

    private void emit() {
        if (latest.isEmpty()) {
            return; // live, most watermark steps fire no window
        }
        Map<String, List<Row>> byView = new HashMap<>();
        for (Row row : latest.values()) {
            byView.computeIfAbsent((String) row.getField(0), v -> new ArrayList<>()).add(row);
        }
        latest.clear();
        for (Map.Entry<String, List<Row>> view : byView.entrySet()) {
            List<Row> rows = view.getValue();
            for (int start = 0; start < rows.size(); start += batchSize) {
                StringBuilder json = new StringBuilder("[");
                for (int i = start; i < Math.min(start + batchSize, rows.size()); i++) {
                    Row r = rows.get(i);
                    if (i > start) {
                        json.append(',');
                    }
                    json.append('[').append(r.getField(1)).append(',').append(r.getField(2)).append(',')
                            .append(r.getField(3)).append(']');
                }
                output.collect(new StreamRecord<>(Row.of(view.getKey(), json.append(']').toString())));
            }
        }
    }
}
