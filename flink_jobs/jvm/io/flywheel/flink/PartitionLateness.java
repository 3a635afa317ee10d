package io.flywheel.flink;

import java.time.Instant;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeHint;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.runtime.state.StateInitializationContext;
import org.apache.flink.runtime.state.StateSnapshotContext;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * Sets the bound a record's lateness is judged against (its column {@code wm}): the highest event time
 * read before it from the same Kafka partition, minus the allowed delay (null for a partition's first
 * record), or the current watermark the column arrives with (CURRENT_WATERMARK) when that is higher. A
 * record is late when its event time is not above the bound.
 *
 * <p>Why: the current watermark moves only when the source emits one, every auto-watermark interval, so
 * whether an old event counted as late depended on when those emissions fell relative to the read
 * position, and differed between replays of the same topic. The partition's bound depends on its records
 * alone, in their order, and it is never below the watermark that partition's generator has emitted (the
 * same maximum and delay, at some earlier point); the source's watermark is the smallest over its
 * partitions, so the current watermark only wins where a partition was left out of that minimum as idle
 * ({@code features.idle_timeout_s}, live runs only): an event of a partition waking behind the watermark
 * then goes to the late topic instead of being dropped by the windows. Without idleness the verdict is a
 * function of the input alone.
 *
 * <p>It runs chained to the source (forward edges keep each partition's order). The per-partition
 * maxima are operator list state: restored at the same parallelism, each subtask gets back the maxima it
 * wrote, for the partitions its source subtask reads again, so a restored job judges as the uninterrupted
 * one would (Flink does not checkpoint watermarks: a restored source reads its first records with none).
 * A rescale spreads the entries evenly instead, so a partition whose maximum went to another subtask is
 * judged against the current watermark alone until its next record. Not union state, which would give
 * every subtask every maximum: Flink cannot complete a checkpoint of a vertex with union state once some
 * of its subtasks have finished (a bounded run whose smaller partitions are read), so a replay's whole
 * tail would go without checkpoints. Every record counts toward the maximum, dead-lettered ones too, as
 * they count toward the watermark.
 */
public class PartitionLateness extends AbstractStreamOperator<Row> implements OneInputStreamOperator<Row, Row> {
    private final int eventTimeField;
    private final int partitionField;
    private final int boundField;
    private final long delayMs;
    private transient ListState<Tuple2<Integer, Long>> state;
    private transient Map<Integer, Long> highest;

    public PartitionLateness(int eventTimeField, int partitionField, int boundField, long delayMs) {
        this.eventTimeField = eventTimeField;
        this.partitionField = partitionField;
        this.boundField = boundField;
        this.delayMs = delayMs;
    }

    @Override
    public void initializeState(StateInitializationContext context) throws Exception {
        super.initializeState(context);
        // A name of its own: savepoints of the union-state version hold theirs under the old one.
        state = context.getOperatorStateStore().getListState(new ListStateDescriptor<>(
                "partition-highest-event-time-split", TypeInformation.of(new TypeHint<Tuple2<Integer, Long>>() {})));
        highest = new HashMap<>();
        for (Tuple2<Integer, Long> entry : state.get()) {
            highest.merge(entry.f0, entry.f1, Math::max);
        }
    }

    @Override
    public void snapshotState(StateSnapshotContext context) throws Exception {
        super.snapshotState(context);
        List<Tuple2<Integer, Long>> entries = new ArrayList<>(highest.size());
        highest.forEach((partition, ms) -> entries.add(Tuple2.of(partition, ms)));
        state.update(entries);
    }

    @Override
    public void processElement(StreamRecord<Row> element) {
        Row row = element.getValue();
        Integer partition = (Integer) row.getField(partitionField);
        long ms = ((Instant) row.getField(eventTimeField)).toEpochMilli();
        Long before = highest.get(partition);
        Instant current = (Instant) row.getField(boundField);
        if (before != null && (current == null || current.toEpochMilli() < before - delayMs)) {
            row.setField(boundField, Instant.ofEpochMilli(before - delayMs));
        }
        if (before == null || ms > before) {
            highest.put(partition, ms);
        }
        output.collect(element);
    }
}
