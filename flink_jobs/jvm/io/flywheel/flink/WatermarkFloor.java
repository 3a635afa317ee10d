package io.flywheel.flink;

import java.time.Instant;
import java.util.List;

import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.runtime.state.StateInitializationContext;
import org.apache.flink.runtime.state.StateSnapshotContext;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * Keeps the watermark a record is judged against (its column {@code wm}, CURRENT_WATERMARK at the
 * source) from falling back after a restore.
 *
 * <p>Why: Flink does not checkpoint the source's watermark. A restored job reads its first records with
 * no watermark at all, so a late event among them would pass as on time, while the window operators
 * downstream restore theirs (the smallest over their subtasks) and drop it, uncounted: it would be
 * neither aggregated nor in the late topic. This operator checkpoints the highest watermark that passed
 * it (every watermark downstream passed one of its subtasks), and after a restore raises {@code wm} to
 * the smallest of those (union state: what every window subtask has at least seen), so such an event
 * goes to the late topic, as it would have before the failure.
 */
public class WatermarkFloor extends AbstractStreamOperator<Row> implements OneInputStreamOperator<Row, Row> {
    private final int wmField;
    private transient ListState<Long> state;
    private transient long floor;
    private transient long seen;

    public WatermarkFloor(int wmField) {
        this.wmField = wmField;
    }

    @Override
    public void initializeState(StateInitializationContext context) throws Exception {
        super.initializeState(context);
        state = context.getOperatorStateStore()
                .getUnionListState(new ListStateDescriptor<>("watermark-floor", Long.class));
        floor = Long.MIN_VALUE;
        if (context.isRestored()) {
            Long min = null;
            for (Long w : state.get()) {
                min = min == null ? w : Math.min(min, w);
            }
            floor = min == null ? Long.MIN_VALUE : min;
        }
        seen = floor;
    }

    @Override
    public void snapshotState(StateSnapshotContext context) throws Exception {
        super.snapshotState(context);
        state.update(List.of(seen));
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        seen = Math.max(seen, mark.getTimestamp());
        super.processWatermark(mark);
    }

    @Override
    public void processElement(StreamRecord<Row> element) {
        Row row = element.getValue();
        Instant wm = (Instant) row.getField(wmField);
        if (floor > Long.MIN_VALUE && (wm == null || wm.toEpochMilli() < floor)) {
            row.setField(wmField, Instant.ofEpochMilli(floor));
        }
        output.collect(element);
    }
}
