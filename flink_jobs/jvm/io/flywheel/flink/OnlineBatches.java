package io.flywheel.flink;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.runtime.state.StateInitializationContext;
import org.apache.flink.runtime.state.StateSnapshotContext;
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
 *   <li>replaying or catching up: at the first checkpoint {@code catchUpFlushMs} after the last hand-over.
 *       Event time then races through many slides per second, and the Python writes are what the job
 *       spends most on: the longer a key's values collapse, the fewer. (Redis may then lag by that much
 *       more while the job catches up; a live job is not affected);
 *   <li>at the end of the input.
 * </ul>
 *
 * <p>Exactly-once: values not handed over yet are operator state (checkpointed, restored after a
 * failure or from a savepoint), and what was handed over before a barrier the Python writer (chained
 * next) writes to Redis before the barrier passes it, since PyFlink finishes its bundle first. A
 * completed checkpoint therefore covers every value either in Redis or in its state. A replay after a
 * failure rewrites values with the same timestamps, which Feast's Redis store skips.
 *
 * <p>Batching in the JVM also means one trip into Python per batch, not per value.
 */
public class OnlineBatches extends AbstractStreamOperator<Row> implements OneInputStreamOperator<Row, Row> {
    private static final TypeInformation<Row> VALUE =
            Types.ROW(Types.STRING, Types.STRING, Types.LONG, Types.STRING);
    private final int batchSize;
    private final long liveLagMs;
    private final long catchUpFlushMs;
    private transient Map<String, Row> latest;
    private transient ListState<Row> pending;
    private transient long lastHandOverMs;
    private transient boolean live;

    public OnlineBatches(int batchSize, long liveLagMs, long catchUpFlushMs) {
        this.batchSize = batchSize;
        this.liveLagMs = liveLagMs;
        this.catchUpFlushMs = catchUpFlushMs;
    }

    @Override
    public void initializeState(StateInitializationContext context) throws Exception {
        super.initializeState(context);
        latest = new HashMap<>();
        pending = context.getOperatorStateStore().getListState(new ListStateDescriptor<>("pending-online-values", VALUE));
        for (Row row : pending.get()) {
            keep(row);
        }
        lastHandOverMs = System.currentTimeMillis();
    }

    /** in: (feature_view, entity_keys JSON, window_end_ms, feature_values JSON) */
    @Override
    public void processElement(StreamRecord<Row> element) {
        Row row = element.getValue();
        // A positional copy: object reuse is on (the caller recycles `row`), and it goes into state.
        keep(Row.of(row.getField(0), row.getField(1), row.getField(2), row.getField(3)));
    }

    private void keep(Row row) {
        String key = row.getField(0) + "\u0000" + row.getField(1);
        Row seen = latest.get(key);
        if (seen == null || (Long) seen.getField(2) <= (Long) row.getField(2)) {
            latest.put(key, row);
        }
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

    private void handOver() {
        lastHandOverMs = System.currentTimeMillis();
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
