-- migrate:up

-- Which incarnation of the totals topic (Kafka's topic id and the partition count)
-- this workspace's policy last served from. A replica starting against another one
-- (the broker lost its data and the topic was created again, maybe empty) is not
-- ready until an operator accepts it: answering from an empty topic would start every
-- user at zero.
CREATE TABLE policy.topic_marks (
    workspace_id  text NOT NULL,
    topic         text NOT NULL,
    topic_id      text NOT NULL,  -- '' where the broker gives no topic ids
    partitions    integer NOT NULL CHECK (partitions > 0),
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    recorded_by   text NOT NULL,
    reason        text NOT NULL,
    PRIMARY KEY (workspace_id, topic)
);

-- Every acceptance of a new incarnation, kept for ever: who, why, from what to what.
CREATE TABLE policy.topic_accepts (
    accept_id       bigserial PRIMARY KEY,
    workspace_id    text NOT NULL,
    topic           text NOT NULL,
    accepted_at     timestamptz NOT NULL DEFAULT now(),
    accepted_by     text NOT NULL CHECK (accepted_by <> ''),
    reason          text NOT NULL CHECK (reason <> ''),
    old_topic_id    text,
    old_partitions  integer,
    new_topic_id    text NOT NULL,
    new_partitions  integer NOT NULL
);

-- migrate:down
DROP TABLE policy.topic_accepts;
DROP TABLE policy.topic_marks;
