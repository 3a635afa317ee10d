package io.flywheel.flink;

import java.io.IOException;
import java.io.StringWriter;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonGenerator;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.table.api.DataTypes;
import org.apache.flink.table.catalog.DataTypeFactory;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.functions.TableFunction;
import org.apache.flink.table.types.DataType;
import org.apache.flink.table.types.inference.TypeInference;

/**
 * JSON_FIELDS(payload, 'a,b,c'): the record's top-level fields, parsed once, as one row of columns:
 * {@code is_object} (false: not a JSON object, or not JSON at all), {@code extras} (the fields not in the
 * list, as a compact JSON object; NULL when there are none), then for each listed field {@code has_<field>} (present, even as null) and {@code j_<field>}
 * (its value as text, like JSON_VALUE: a scalar as its text; JSON null, an object or an array as NULL).
 * Use it as {@code FROM t, LATERAL TABLE(JSON_FIELDS(payload, '...')) AS p}. Always one row.
 *
 * <p>A listed name {@code parent.child} reads a scalar one level inside an object field ({@code
 * context.policy}); its columns are {@code has_parent__child} and {@code j_parent__child}. Fields inside
 * an object are never extras.
 *
 * <p>Why: Flink's JSON_VALUE and JSON_EXISTS parse the whole document on every call, and the event
 * contract (flink_jobs/contract_sql.py) needs about forty of them per record. A table function, not a
 * scalar one, because the planner inlines a scalar call into each of its uses; a lateral table is
 * evaluated once. Columns, not a MAP: each of the contract's ~70 reads of a map is a scan of its keys.
 */
public class JsonFields extends TableFunction<RowData> {
    private static final JsonFactory FACTORY = new JsonFactory();
    private transient String listed;
    private transient Map<String, Integer> index; // top-level field -> column index
    private transient Map<String, Map<String, Integer>> nested; // parent -> child -> column index
    private transient int count;

    public void eval(String json, String fields) {
        if (!fields.equals(listed)) {
            listed = fields;
            index = new HashMap<>();
            nested = new HashMap<>();
            String[] names = fields.split(",");
            for (int i = 0; i < names.length; i++) {
                int dot = names[i].indexOf('.');
                if (dot > 0) {
                    nested.computeIfAbsent(names[i].substring(0, dot), k -> new HashMap<>())
                            .put(names[i].substring(dot + 1), i);
                } else {
                    index.put(names[i], i);
                }
            }
            count = names.length;
        }
        int n = count;
        GenericRowData row = new GenericRowData(2 + 2 * n);
        boolean object = parse(json, row, n);
        if (!object) {
            row = new GenericRowData(2 + 2 * n); // nothing of a record that is not one JSON object
        }
        row.setField(0, object);
        for (int i = 2; i < 2 + n; i++) {
            if (row.getField(i) == null) {
                row.setField(i, false);
            }
        }
        collect(row);
    }

    /** Sets what is present, the values and the extras; false when the record is not one JSON object. */
    private boolean parse(String json, GenericRowData row, int n) {
        if (json == null) {
            return false;
        }
        StringWriter extras = null;
        try (JsonParser p = FACTORY.createParser(json)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                return false;
            }
            JsonToken t;
            JsonGenerator g = null;
            while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
                String name = p.currentName();
                Integer i = index.get(name);
                JsonToken v = p.nextToken();
                if (i == null && !nested.containsKey(name)) { // outside the contract: kept as it came
                    if (g == null) {
                        extras = new StringWriter();
                        g = FACTORY.createGenerator(extras);
                        g.writeStartObject();
                    }
                    g.writeFieldName(name);
                    g.copyCurrentStructure(p);
                    continue;
                }
                String text = null;
                Map<String, Integer> children = nested.get(name);
                if (v == JsonToken.START_OBJECT && children != null) {
                    parseChildren(p, children, row, n);
                } else if (v == JsonToken.START_OBJECT || v == JsonToken.START_ARRAY) {
                    p.skipChildren();
                } else if (v != JsonToken.VALUE_NULL) {
                    text = p.getText();
                }
                if (i != null) {
                    row.setField(2 + i, true);
                    row.setField(2 + n + i, text == null ? null : StringData.fromString(text));
                }
            }
            if (g != null) {
                g.writeEndObject();
                g.close();
                row.setField(1, StringData.fromString(extras.toString()));
            }
            return t == JsonToken.END_OBJECT && p.nextToken() == null; // else truncated, or trailing content
        } catch (IOException e) {
            return false;
        }
    }

    /** The scalars of one object (the parser on its START_OBJECT) that are listed as parent.child. */
    private static void parseChildren(JsonParser p, Map<String, Integer> children, GenericRowData row, int n)
            throws IOException {
        while (p.nextToken() == JsonToken.FIELD_NAME) {
            Integer i = children.get(p.currentName());
            JsonToken v = p.nextToken();
            String text = null;
            if (v == JsonToken.START_OBJECT || v == JsonToken.START_ARRAY) {
                p.skipChildren();
            } else if (v != JsonToken.VALUE_NULL) {
                text = p.getText();
            }
            if (i != null) {
                row.setField(2 + i, true);
                row.setField(2 + n + i, text == null ? null : StringData.fromString(text));
            }
        }
    }

    @Override
    public TypeInference getTypeInference(DataTypeFactory typeFactory) {
        return TypeInference.newBuilder()
                .typedArguments(DataTypes.STRING(), DataTypes.STRING())
                .outputTypeStrategy(call -> {
                    Optional<String> fields = call.getArgumentValue(1, String.class);
                    if (fields.isEmpty()) {
                        throw call.newValidationError("JSON_FIELDS: the field list must be a string literal");
                    }
                    List<DataTypes.Field> columns = new ArrayList<>();
                    columns.add(DataTypes.FIELD("is_object", DataTypes.BOOLEAN().notNull()));
                    columns.add(DataTypes.FIELD("extras", DataTypes.STRING()));
                    String[] names = fields.get().split(",");
                    for (String f : names) {
                        columns.add(DataTypes.FIELD("has_" + f.replace(".", "__"), DataTypes.BOOLEAN().notNull()));
                    }
                    for (String f : names) {
                        columns.add(DataTypes.FIELD("j_" + f.replace(".", "__"), DataTypes.STRING()));
                    }
                    DataType row = DataTypes.ROW(columns.toArray(new DataTypes.Field[0])).bridgedTo(RowData.class);
                    return Optional.of(row);
                })
                .build();
    }
}
