-- migrate:up
-- Which incarnation of each topic a consumer's stored offsets (and the totals it
-- publishes) belong to: Kafka's topic id ('' when the broker gives none) and the
-- partition count, recorded when counting began or an operator accepted the topic.
-- A broker that lost its data recreates topics with new ids: metering then refuses
-- to count instead of skipping every new record as already counted.
CREATE TABLE metering.topic_marks (
    consumer     text NOT NULL,
    topic        text NOT NULL,
    topic_id     text NOT NULL,
    partitions   integer NOT NULL CHECK (partitions > 0),
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    recorded_by  text NOT NULL,
    reason       text NOT NULL,
    PRIMARY KEY (consumer, topic)
);

-- Every time an operator accepted a topic as it is (`cli topic accept`): who, why,
-- what was stored before and what counting starts from. Kept for ever.
CREATE TABLE metering.topic_accepts (
    id              bigserial PRIMARY KEY,
    consumer        text NOT NULL,
    topic           text NOT NULL,
    accepted_at     timestamptz NOT NULL DEFAULT now(),
    accepted_by     text NOT NULL,
    reason          text NOT NULL,
    problems        text[] NOT NULL,
    old_topic_id    text,
    old_partitions  integer,
    old_offsets     jsonb NOT NULL,
    new_topic_id    text NOT NULL,
    new_partitions  integer NOT NULL,
    new_offsets     jsonb NOT NULL
);

-- migrate:down
DROP TABLE metering.topic_accepts;
DROP TABLE metering.topic_marks;
