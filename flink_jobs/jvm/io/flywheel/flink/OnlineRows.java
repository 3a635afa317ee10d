package io.flywheel.flink;

import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

import org.apache.flink.runtime.state.KeyGroupRangeAssignment;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * What the online writer receives: each key's latest row since the last watermark, as Row(shard, row)
 * with row = (feature_view, entity_keys, window_end_ms, feature_values).
 *
 * <p>Latest per key: Redis keeps only a key's newest value, and the rows a watermark step fires for
 * one key are successive values of it (in a replay, event time races through many slides at once; at
 * the end of a bounded input, every open window drains to empty in one step). Only the last of them is
 * worth a Feast write. Live, a step is the watermark interval (200 ms), so this adds at most that.
 *
 * <p>Exactly-once without state: the buffer is emitted before every checkpoint barrier, so a completed
 * checkpoint never covers a row that has not been handed to the writer.
 *
 * <p>Row(shard, row) is the shape PyFlink's keyed Python operators take. Building it here saves the
 * Python operator PyFlink's key_by adds to compute a key (one more trip of every row through Python).
 * The shard is chosen by the entity keys, so a key's values always reach the same writer, in order.
 */
public class OnlineRows extends AbstractStreamOperator<Row> implements OneInputStreamOperator<Row, Row> {
    private final int[] shards;
    private transient Map<String, Row> latest;

    /** @param writers the online writer's parallelism; maxParallelism: its number of key groups */
    public OnlineRows(int writers, int maxParallelism) {
        this.shards = shardKeys(writers, maxParallelism);
    }

    @Override
    public void open() throws Exception {
        super.open();
        latest = new HashMap<>();
    }

    @Override
    public void processElement(StreamRecord<Row> element) {
        Row row = element.getValue();
        String key = row.getField(0) + "\u0000" + row.getField(1);
        Row seen = latest.get(key);
        if (seen == null || (Long) seen.getField(2) <= (Long) row.getField(2)) {
            latest.put(key, Row.copy(row));
        }
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        emit();
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
        for (Row row : latest.values()) {
            int shard = shards[Math.floorMod(((String) row.getField(1)).hashCode(), shards.length)];
            output.collect(new StreamRecord<>(Row.of(shard, row)));
        }
        latest.clear();
    }

    /**
     * One key per writer subtask: shards[i] is the smallest int that Flink assigns to subtask i when the
     * key is PyFlink's one-field Row. (Keys 0..n-1 do not spread: 0 and 1 both land on the first of two.)
     */
    static int[] shardKeys(int writers, int maxParallelism) {
        int[] keys = new int[writers];
        Arrays.fill(keys, -1);
        for (int k = 0, found = 0; found < writers; k++) {
            int subtask = KeyGroupRangeAssignment.assignKeyToParallelOperator(Row.of(k), maxParallelism, writers);
            if (keys[subtask] < 0) {
                keys[subtask] = k;
                found++;
            }
        }
        return keys;
    }
}
