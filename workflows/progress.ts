import { defineQuery, defineSignal } from '@temporalio/workflow';
import type { ExperimentProgress, GroupFinished } from '../core/model';

/** Signals and queries of the ExperimentWorkflow, beside it so clients import them from one place. */

export const progressQuery = defineQuery<ExperimentProgress>('progress');
/** A submitter or the watcher added image sets to an open experiment: look for them. */
export const imageSetsAddedSignal = defineSignal('imageSetsAdded');
/** The experiment is closed: no more image sets will come. */
export const sealedSignal = defineSignal('sealed');
/** A chunk child finished one group of a stage that later stages wait for (sent to its parent). */
export const groupFinishedSignal = defineSignal<[GroupFinished]>('groupFinished');
